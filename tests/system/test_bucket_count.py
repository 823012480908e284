"""The bucket count is a recorded fact of the deployment (issue #12; counters/runtime/layout.py).

The first start records it in Redis and Postgres; a later start whose setting disagrees refuses
to start naming both counts; a deployment that recorded 16 keeps its 16 when the setting is not
given, whatever the default became. Real Redis and Postgres, the app's own lifespan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from api.app import create_app
from counters.cli.main import main
from counters.clock import ManualClock
from counters.errors import ConfigError
from counters.redis.keys import LAYOUT_KEY, UserKeys
from counters.runtime.durability import Durability
from counters.runtime.layout import check_ledger_layout, choose_buckets
from counters.settings import DEFAULT_KEY_BUCKETS, Settings
from persistence.store import Store
from tests.support.core import user_headers
from tests.support.http import asgi_client
from tests.support.persistence import run_sync
from tests.support.serve import refused_serve

pytestmark = pytest.mark.anyio


def unset(settings: Settings) -> Settings:
    """``settings`` as a start without COUNTERS_KEY_BUCKETS sees them."""
    return replace(settings, key_buckets=DEFAULT_KEY_BUCKETS, key_buckets_given=False)


def given(settings: Settings, count: int) -> Settings:
    """``settings`` as a start with COUNTERS_KEY_BUCKETS=count sees them."""
    return replace(settings, key_buckets=count, key_buckets_given=True)


def durable(settings: Settings, database_url: str) -> Settings:
    """``settings`` with Postgres, no flusher and no background restore: the count must be
    recorded by the start itself (a restore pass records it in Redis too). With the restore on
    and no flusher, a pass that began after the gain waited for its event to be ledgered
    (``LedgerMark.reach``), and the shutdown waited for that pass, cancelled yet still polling,
    until the 30 s write timeout: in about one run of 15."""
    return replace(
        settings, database_url=database_url, flusher_enabled=False, restore_interval_seconds=0
    )


def ledger_count(database_url: str) -> int | None:
    async def go() -> int | None:
        store = await Store.open(database_url)
        try:
            async with store.connection("test") as conn:
                value: int | None = await conn.fetchval("SELECT key_buckets FROM bucket_layout")
                return value
        finally:
            await store.close()

    return run_sync(go())


def record_in_ledger(database_url: str, count: int) -> None:
    async def go() -> None:
        store = await Store.open(database_url)
        try:
            async with store.connection("test") as conn:
                await conn.execute("INSERT INTO bucket_layout (key_buckets) VALUES ($1)", count)
        finally:
            await store.close()

    run_sync(go())


async def started_buckets(settings: Settings, user: str = "layout-u") -> int:
    """Start the app with ``settings``, award ``user``, and return the count it runs with."""
    app = create_app(settings, clock=ManualClock(1_795_000_000.0))
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        response = await http.post(
            "/api/exp/gain", json={"action": "daily_chat"}, headers=user_headers(user)
        )
        assert response.status_code == 200, response.text
        count: int = app.state.services.settings.key_buckets
        return count


def test_choose_buckets_follows_the_record_and_refuses_a_contradiction() -> None:
    assert choose_buckets(1024, False, {}) == 1024
    assert choose_buckets(1024, False, {"redis": 16}) == 16
    assert choose_buckets(1024, False, {"redis": 16, "postgres": 16}) == 16
    assert choose_buckets(16, True, {"postgres": 16}) == 16
    with pytest.raises(ConfigError, match=r"COUNTERS_KEY_BUCKETS=1024 .* recorded 16 buckets"):
        choose_buckets(1024, True, {"redis": 16})
    with pytest.raises(ConfigError, match="postgres records 32, redis records 16"):
        choose_buckets(16, False, {"redis": 16, "postgres": 32})


def test_the_environment_marks_the_count_as_given() -> None:
    assert not Settings.from_env({}).buckets_given
    assert Settings.from_env({}).key_buckets == DEFAULT_KEY_BUCKETS == 1024
    chosen = Settings.from_env({"COUNTERS_KEY_BUCKETS": str(DEFAULT_KEY_BUCKETS)})
    assert chosen.buckets_given and chosen.key_buckets == DEFAULT_KEY_BUCKETS


async def test_a_first_start_records_the_default_in_redis_and_postgres(
    settings: Settings, database_url: str, redis_client: redis.Redis
) -> None:
    assert await started_buckets(durable(unset(settings), database_url)) == DEFAULT_KEY_BUCKETS
    assert redis_client.hget(LAYOUT_KEY, "key_buckets") == str(DEFAULT_KEY_BUCKETS)
    assert ledger_count(database_url) == DEFAULT_KEY_BUCKETS


async def test_a_deployment_that_recorded_16_keeps_16_when_the_setting_is_unset(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.hset(LAYOUT_KEY, "key_buckets", "16")
    assert await started_buckets(unset(settings)) == 16
    # The user's keys are where a 16-bucket deployment put them.
    assert redis_client.exists(UserKeys.of("layout-u", 16).user)
    assert await started_buckets(given(settings, 16), "other") == 16  # saying so is fine


async def test_a_setting_that_contradicts_the_record_refuses_to_start(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.hset(LAYOUT_KEY, "key_buckets", "16")
    app = create_app(given(settings, 1024))
    with pytest.raises(ConfigError, match=r"COUNTERS_KEY_BUCKETS=1024 .* recorded 16 buckets"):
        async with app.router.lifespan_context(app):
            pass
    assert redis_client.hget(LAYOUT_KEY, "key_buckets") == "16"  # nothing re-recorded


async def test_redis_lost_takes_the_count_back_from_postgres(
    settings: Settings, database_url: str, redis_client: redis.Redis
) -> None:
    record_in_ledger(database_url, 16)  # Redis was flushed: only the ledger remembers
    assert await started_buckets(durable(unset(settings), database_url)) == 16
    assert redis_client.hget(LAYOUT_KEY, "key_buckets") == "16"


async def test_redis_and_postgres_recording_different_counts_refuse_to_start(
    settings: Settings, database_url: str, redis_client: redis.Redis
) -> None:
    record_in_ledger(database_url, 32)
    redis_client.hset(LAYOUT_KEY, "key_buckets", "16")
    app = create_app(replace(unset(settings), database_url=database_url))
    with pytest.raises(ConfigError, match="postgres records 32, redis records 16"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_ledger_checked_late_stops_the_flusher_and_says_why(database_url: str) -> None:
    store = await Store.open(database_url)
    try:
        assert await check_ledger_layout(store, 16, 2.0) is None  # recorded now
        why = await check_ledger_layout(store, 1024, 2.0)
        assert why is not None and "1024 buckets but Postgres recorded 16" in why
    finally:
        await store.close()


async def test_a_ledger_that_recorded_another_count_after_start_is_never_flushed(
    settings: Settings, database_url: str
) -> None:
    # Postgres was down (or not migrated) when this process settled its count at 16; it had
    # recorded 32. Once the migrations apply, the check stops the flusher, /readyz says why and
    # writes are refused.
    record_in_ledger(database_url, 32)
    durability = await Durability.open(replace(given(settings, 16), database_url=database_url))
    try:
        await durability._migrate_then_flush()
        assert not durability.schema_ready and durability._task is None  # no flusher
        why = durability.stall(None)
        assert why is not None and "16 buckets but Postgres recorded 32" in why
        # Writes are refused (503) instead of piling up events no flusher will ever ledger,
        # and a later lag refresh does not lift the refusal.
        refusal = durability.write_refusal
        assert refusal is not None and "could never be ledgered" in str(refusal)
        assert durability.layout_refusal is refusal
    finally:
        await durability.close()


def test_the_cli_refuses_a_contradicting_count_and_follows_the_record(
    settings: Settings, database_url: str, redis_client: redis.Redis
) -> None:
    redis_client.hset(LAYOUT_KEY, "key_buckets", "16")
    env = {"COUNTERS_REDIS_URL": settings.redis_url or "", "COUNTERS_DATABASE_URL": database_url}
    refused = CliRunner().invoke(
        main, ["flush", "--burst"], env=env | {"COUNTERS_KEY_BUCKETS": "1024"}
    )
    assert refused.exit_code != 0
    assert "COUNTERS_KEY_BUCKETS=1024 but this deployment recorded 16 buckets" in refused.output
    assert ledger_count(database_url) is None  # nothing recorded by a refused start
    flushed = CliRunner().invoke(main, ["flush", "--burst"], env=env)
    assert (flushed.exit_code, flushed.output) == (0, "flushed 0 events\n")
    assert ledger_count(database_url) == 16  # the record, now in Postgres too


def test_serve_refuses_a_contradicting_count_in_one_line(
    settings: Settings, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """As flush does: exit 2 and one line naming both counts, before any worker starts (it was
    a traceback from each worker's start-up, and exit 3)."""
    redis_client.hset(LAYOUT_KEY, "key_buckets", "16")
    refused = refused_serve(
        settings.redis_url or "", tmp_path,
        COUNTERS_DATABASE_URL=database_url, COUNTERS_KEY_BUCKETS="1024",
    )  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert "COUNTERS_KEY_BUCKETS=1024 but this deployment recorded 16 buckets" in refused.output
    assert "Traceback" not in refused.output
