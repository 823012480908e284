"""The migrations, and the pure parts of turning stream entries into ledger rows and totals."""

from __future__ import annotations

import secrets

import asyncpg  # type: ignore[import-untyped]
import pytest

from persistence.events import LedgerEvent, OwnerEvent, collapse, parse, sort_entries
from persistence.migrate import migrate, migrations
from tests.support.persistence import run_sync

EXP = {
    "event_id": "u:3", "user": "u", "seq": "3", "ts": "1700000000000", "kind": "exp_award",
    "action": "daily_chat", "amount": "20", "actor": "u", "target": "", "day": "20231114",
    "idem": "", "exp": "120", "level": "2",
}  # fmt: skip
XP = {
    "event_id": "u:4", "user": "u", "seq": "4", "ts": "1700000000001", "kind": "xp_debit",
    "action": "NEW_IMAGE", "amount": "-12", "actor": "u", "target": "tx1", "idem": "k",
    "effective_ts": "1700000000001", "xp_balance": "588", "xp_allocation": "588",
    "xp_topup": "0", "xp_held": "0", "tier": "pixel_rookie", "xp_state": '{"alloc": 588}',
}  # fmt: skip


def test_migrations_apply_once(database_url: str) -> None:
    async def twice() -> tuple[int, int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            again = await migrate(conn)
            versions = await conn.fetchval("SELECT count(*) FROM schema_migrations")
            return len(again), versions, len(migrations())
        finally:
            await conn.close()

    applied_again, recorded, shipped = run_sync(twice())
    assert (applied_again, recorded) == (0, shipped)


def test_an_event_keeps_its_fields_and_totals() -> None:
    event = parse("s", "1-0", EXP)
    assert isinstance(event, LedgerEvent)
    assert (event.event_id, event.seq, event.amount, event.day, event.idem) == (
        "u:3", 3, 20, "20231114", None,
    )  # fmt: skip
    assert event.totals == {"exp": 120, "level": 2}
    xp = parse("s", "2-0", XP)
    assert isinstance(xp, LedgerEvent)
    assert xp.xp_state == '{"alloc": 588}' and "xp_state" not in xp.totals
    assert xp.totals["tier"] == "pixel_rookie" and xp.totals["xp_balance"] == 588


def test_owner_events_and_malformed_entries() -> None:
    owner = parse("s", "5-2", {"kind": "entity_owner", "target": "character:c:1", "owner": "u"})
    assert owner == OwnerEvent("character", "c:1", "u", (5, 2), stream="s")
    fenced = {"kind": "entity_owner", "target": "character:c", "owner": "u", "run": "17"}
    assert parse("s", "5-2", fenced) == OwnerEvent("character", "c", "u", (5, 2), 0, "s", "17")
    batch = sort_entries([("s", "1-0", {"kind": "exp_award"}), ("s", "2-0", None)])
    assert [r.reason for r in batch.rejected] == ["missing event_id, user, seq, ts, amount"]
    with pytest.raises(ValueError, match="entity_owner event without"):
        parse("s", "1-0", {"kind": "entity_owner", "target": "nocolon", "owner": "u"})


def test_collapse_keeps_each_family_from_its_newest_event_in_any_order() -> None:
    exp, xp = parse("s", "1-0", EXP), parse("s", "2-0", XP)
    older = parse("s", "0-1", {**EXP, "event_id": "u:2", "seq": "2", "exp": "100"})
    assert isinstance(exp, LedgerEvent) and isinstance(xp, LedgerEvent)
    assert isinstance(older, LedgerEvent)
    (row,) = collapse([xp, exp, older])
    assert (row.seq, row.exp_seq, row.exp, row.level, row.xp_seq) == (4, 3, 120, 2, 4)
    assert row.xp["xp_balance"] == 588 and row.xp_state == '{"alloc": 588}'


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"seq": "1e3"}, "invalid literal for int()"),
        ({"amount": str(2**63)}, "amount out of range"),
        ({"ts": str(10**16)}, "ts out of range"),
        ({"action": "a\x00b"}, "a NUL character"),
        ({"act\x00ion": "x"}, "unknown field"),  # a name with a NUL is no field of the schema
    ],
)
def test_values_postgres_would_refuse_are_rejected_before_the_batch(
    change: dict[str, str], reason: str
) -> None:
    # One such entry must not fail its whole batch forever: it is quarantined on its own.
    batch = sort_entries([("s", "1-0", {**EXP, **change}), ("s", "2-0", EXP)])
    assert len(batch.events) == 1
    assert reason in batch.rejected[0].reason


def test_0007_on_a_ledger_with_rows_keeps_every_reader_indexed(database_url: str) -> None:
    """Migration 0007 (issue #11) on a database that already has rows (a rolling upgrade): the
    rows stay, and the hydration's, the leaderboard's and history's reads each have an index."""
    hydration = (
        "SELECT action, count(*) AS n, sum(amount) AS exp FROM ledger"
        " WHERE user_id = 'u1' AND day = '20261130' AND kind = 'exp_award' GROUP BY action"
    )
    week = (
        "SELECT user_id, sum(amount) AS exp FROM ledger WHERE kind = 'exp_award'"
        " AND day BETWEEN '20261130' AND '20261206' GROUP BY user_id ORDER BY user_id"
    )
    history = "SELECT seq FROM ledger WHERE user_id = 'u1' ORDER BY occurred_at DESC, seq DESC"

    async def upgrade() -> tuple[list[str], list[object], str, str, str]:
        admin = await asyncpg.connect(database_url)
        name = f"upgrade_{secrets.token_hex(4)}"
        await admin.execute(f"CREATE DATABASE {name}")
        conn = await asyncpg.connect(f"{database_url.rsplit('/', 1)[0]}/{name}")
        try:
            for migration in migrations():  # the schema as the previous release left it
                if migration.version < 7:
                    await conn.execute(migration.sql)
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.executemany(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                [(m.version, m.name) for m in migrations() if m.version < 7],
            )
            await conn.execute(
                "INSERT INTO ledger (event_id, user_id, seq, kind, action, amount, day,"
                " occurred_at, totals, stream_id)"
                " SELECT 'u' || (g % 50) || ':' || g, 'u' || (g % 50), g, 'exp_award', 'chat',"
                " 10, CASE WHEN g % 3 = 0 THEN '20261129' ELSE '20261130' END,"
                " to_timestamp(1764460800 + g), '{}', '' FROM generate_series(1, 3000) g"
            )
            applied = [m.name for m in await migrate(conn)]
            await conn.execute("SET enable_seqscan = off")  # a few rows: else it scans anyway
            plans = [
                "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}"))
                for sql in (hydration, week, history)
            ]
            sums = [tuple(r.values()) for r in await conn.fetch(week)][:2] + [
                tuple(r.values()) for r in await conn.fetch(hydration)
            ]
            return applied, sums, *plans
        finally:
            await conn.close()
            await admin.execute(f"DROP DATABASE {name}")
            await admin.close()

    applied, sums, hydration_plan, week_plan, history_plan = run_sync(upgrade())
    assert applied == ["lean_ledger"]
    assert sums == [("u0", 400), ("u1", 400), ("chat", 40, 400)]  # 60 rows each, 2 in 3 that day
    assert "ledger_award_day_user" in hydration_plan and "ledger_award_day_user" in week_plan
    assert "ledger_user_time" in history_plan
