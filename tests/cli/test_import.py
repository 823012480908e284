"""``counters import``: validated line by line (a bad line imports nothing), a dry run, each line
applied once (the same file twice changes nothing, also after Redis forgot), ledgered as
exp_import / xp_import events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis
from click.testing import CliRunner, Result

from counters.bulkimport.records import ExpLine, Record, TopupLine, read_records
from counters.bulkimport.service import ImportService
from counters.cli.importer import import_command
from counters.cli.main import main
from counters.clock import ManualClock
from counters.redis.codes import MAX_TOTAL, XpOutcome
from counters.redis.hydration import NoDurableStore
from counters.rules import load_rules
from counters.runtime.services import Services
from counters.settings import Settings
from tests.support.core import JWT_SECRET, NOON, SERVICE_KEY, data_keys
from tests.support.persistence import run_sync

LINES = [
    {"kind": "exp", "user_id": "adopted-1", "exp": 450, "level": 3},
    {"kind": "subscription", "user_id": "adopted-1", "tier": "arcade_artist"},
    {"kind": "topup", "user_id": "adopted-1", "xp_amount": 70, "reason": "legacy"},
    {"kind": "topup", "user_id": "adopted-1", "xp_amount": 70, "reason": "legacy"},  # a 2nd one
    {"kind": "exp", "user_id": "adopted-2", "exp": 20},
]


def run_import(redis_url: str, database_url: str, *args: str) -> Result:
    env = {
        "COUNTERS_REDIS_URL": redis_url, "COUNTERS_DATABASE_URL": database_url,
        "COUNTERS_SERVICE_KEYS": SERVICE_KEY, "COUNTERS_JWT_SECRET": JWT_SECRET,
    }  # fmt: skip
    return CliRunner().invoke(import_command, list(args), env=env)


def test_an_exp_only_import_of_a_new_user_leaves_no_drift(
    redis_url: str, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The EXP line writes no XP state: its event carries none, so Postgres would never get it."""
    path = write_jsonl(tmp_path / "exp.jsonl", [{"kind": "exp", "user_id": "plain-1", "exp": 77}])
    assert run_import(redis_url, database_url, str(path)).exit_code == 0
    assert "xp" not in user(redis_client, "plain-1")
    env = {"COUNTERS_REDIS_URL": redis_url, "COUNTERS_DATABASE_URL": database_url,
           "COUNTERS_SERVICE_KEYS": SERVICE_KEY, "COUNTERS_JWT_SECRET": JWT_SECRET}  # fmt: skip
    checked = CliRunner().invoke(main, ["reconcile"], env=env)
    assert checked.exit_code == 0, checked.output


def ledger(database_url: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT user_id, kind, action, amount, idem FROM ledger")
        finally:
            await conn.close()
        return [dict(row) for row in rows]

    return run_sync(go())


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def user(redis_client: redis.Redis, user_id: str) -> dict[str, Any]:
    [key] = redis_client.keys(f"*:user:{user_id}")
    fields: dict[str, Any] = redis_client.hgetall(key)
    return fields


def test_import_applies_each_line_once_and_ledgers_it(
    redis_url: str, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "users.jsonl", LINES)
    dry = run_import(redis_url, database_url, str(path), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "5 lines (2 exp, 1 subscription, 2 topup) for 2 users: 5 to apply" in dry.output
    assert data_keys(redis_client) == []
    first = run_import(redis_url, database_url, str(path))
    assert first.exit_code == 0, first.output
    assert "imported" in first.output and "5 applied" in first.output
    one = user(redis_client, "adopted-1")
    assert (one["exp"], one["level"]) == ("450", "3")
    state = json.loads(one["xp"])
    assert state["tier"] == "arcade_artist" and state["alloc"] == 800
    assert [g["left"] for g in state["grants"]] == [70, 70]
    rows = ledger(database_url)
    kinds = sorted((r["user_id"], r["kind"], r["action"], r["amount"]) for r in rows)
    assert kinds == [
        ("adopted-1", "exp_import", "import", 450),
        ("adopted-1", "xp_import", "legacy", 70),  # the reason, as a grant's (FINDINGS F9)
        ("adopted-1", "xp_import", "legacy", 70),
        ("adopted-1", "xp_import", "subscription", 800),
        ("adopted-2", "exp_import", "import", 20),
    ]
    assert all(r["idem"].startswith("imp_") for r in rows) and len({r["idem"] for r in rows}) == 5
    before = {key: redis_client.dump(key) for key in redis_client.keys("*:user:*")}
    again = run_import(redis_url, database_url, str(path))
    assert again.exit_code == 0 and "0 to apply, 5 already imported" in again.output
    assert {key: redis_client.dump(key) for key in redis_client.keys("*:user:*")} == before
    assert len(ledger(database_url)) == 5
    # Redis forgot everything (its import records too): the ledger still knows the lines.
    redis_client.flushall()
    forgot = run_import(redis_url, database_url, str(path))
    assert "5 already imported" in forgot.output and len(ledger(database_url)) == 5


def test_a_bad_line_imports_nothing(
    redis_url: str, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bad = [
        *LINES[:2],
        {"kind": "exp", "user_id": "adopted-3", "exp": -5},
        {"kind": "subscription", "user_id": "adopted-3", "tier": "platinum"},
        {"kind": "exp", "user_id": "adopted-4", "exp": 450, "level": 2},
        {"kind": "exp", "user_id": "adopted-5\n", "exp": 77},  # a second "adopted-5" (issue #10)
        {
            "kind": "subscription",
            "user_id": "adopted-6",
            "tier": "pixel_rookie",
            "period_start": "1970-01-01T00:00:00Z",
        },
        # the API's validation of a grant's reason (422 there; FINDINGS F9)
        {"kind": "topup", "user_id": "adopted-7", "xp_amount": 5, "reason": "a\u0000b"},
        {"kind": "topup", "user_id": "adopted-7", "xp_amount": 5, "reason": "forged\nline"},
        {"kind": "topup", "user_id": "adopted-7", "xp_amount": 5, "reason": ""},
        # A reviewer's finding: imported, then the user's balance answered 500 for good (no
        # reply can write a time in year 10000 UTC); the API's grant refuses it too (422).
        {
            "kind": "topup",
            "user_id": "adopted-8",
            "xp_amount": 5,
            "expires_at": "9999-12-31T23:59:59-12:00",
        },
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    result = run_import(redis_url, database_url, str(path))
    assert result.exit_code == 2
    assert "line 3: Expected `int` >= 0 - at `$.exp`" in result.output
    assert "line 4: unknown tier 'platinum'; known tiers: pixel_rookie" in result.output
    assert "line 5: level 2 does not match 450 EXP (level 3)" in result.output
    assert "line 6: `$.user_id` must be a user id: 1-128 characters" in result.output
    assert "line 7: period_start must be 1970-01-01T00:00:01Z or later" in result.output
    control = "`$.reason` must not contain control characters (U+0000-U+001F, U+007F)"
    assert f"line 8: {control}" in result.output and f"line 9: {control}" in result.output
    assert "line 10: Expected `str` of length >= 1 - at `$.reason`" in result.output
    assert "line 11: expires_at must be at most 9999-12-31T23:59:59Z in UTC" in result.output
    assert "9 bad line(s)" in result.output and "nothing was imported" in result.output
    assert data_keys(redis_client) == [] and ledger(database_url) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_an_import_time_names_its_offset(tmp_path: Path, suffix: str) -> None:
    """A time without an offset was read in the importing machine's time zone
    (``datetime.timestamp``): the same file started periods and expired top-ups hours apart on
    two machines. The API's bodies already refuse one (422)."""
    path = tmp_path / f"naive{suffix}"
    if suffix == ".csv":
        path.write_text(
            "kind,user_id,tier,period_start,xp_amount,expires_at\n"
            "topup,n-1,,,5,2030-01-01T00:00:00\n"
            "subscription,n-1,pixel_rookie,2026-11-01T00:00:00,,\n"
            "topup,n-1,,,5,2030-01-01T00:00:00+10:00\n"
        )
        first, second = 2, 3
    else:
        topup = {"kind": "topup", "user_id": "n-1", "xp_amount": 5}
        write_jsonl(path, [
            {**topup, "expires_at": "2030-01-01T00:00:00"},
            {"kind": "subscription", "user_id": "n-1", "tier": "pixel_rookie",
             "period_start": "2026-11-01T00:00:00"},
            {**topup, "expires_at": "2030-01-01T00:00:00Z"},
        ])  # fmt: skip
        first, second = 1, 2
    records, errors = read_records(path, load_rules(), NOON)
    assert [str(error) for error in errors] == [
        f"line {first}: Expected `datetime` with a timezone component - at `$.expires_at`",
        f"line {second}: Expected `datetime` with a timezone component - at `$.period_start`",
    ]
    assert [record.line_number for record in records] == [second + 1]


def test_a_period_start_in_the_epochs_first_second_is_refused(tmp_path: Path) -> None:
    """A reviewer's finding, the import's side: 1970-01-01T00:00:00.5Z passed the check (as a
    float, it is after 0) and the import then sent its second, 0, which the script reads as
    "now": a subscription started today instead of a refused line."""
    line = {"kind": "subscription", "user_id": "e-1", "tier": "pixel_rookie",
            "period_start": "1970-01-01T00:00:00.5Z"}  # fmt: skip
    records, errors = read_records(write_jsonl(tmp_path / "e.jsonl", [line]), load_rules(), NOON)
    assert records == []
    assert [str(error) for error in errors] == [
        "line 1: period_start must be 1970-01-01T00:00:01Z or later (periods are kept in whole"
        " seconds: a fraction of a second is dropped)"
    ]


def test_csv_lines_add_to_what_the_service_counted(
    redis_url: str, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "users.csv"
    path.write_text("kind,user_id,exp,level,tier,xp_amount\nexp,c-1,120,,,\ntopup,c-1,,,,15\n")
    result = run_import(redis_url, database_url, str(path), "--no-flush")
    assert result.exit_code == 0, result.output
    assert user(redis_client, "c-1")["exp"] == "120"
    path.write_text("kind,user_id,exp\nexp,c-1,30\n")  # another file: added to the 120
    result = run_import(redis_url, database_url, str(path), "--no-flush")
    assert (user(redis_client, "c-1")["exp"], user(redis_client, "c-1")["level"]) == ("150", "2")
    path.write_text("kind,user_id,exp\nexp,c-1,30,extra\n")
    result = run_import(redis_url, database_url, str(path))
    assert result.exit_code == 2 and "line 2: more cells than the header names" in result.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_opening_with_a_byte_order_mark_reads_as_without_one(
    tmp_path: Path, suffix: str
) -> None:
    """Found by reviewer helper-63: Excel's "CSV UTF-8" opens the file with a byte order mark,
    which was read as part of the first header name (every line "Object missing required field
    'kind'") or of the first JSON line ("JSON is malformed"). One leading mark is dropped."""
    text = (
        "kind,user_id,exp\nexp,bom-1,10\n"
        if suffix == ".csv"
        else '{"kind": "exp", "user_id": "bom-1", "exp": 10}\n'
    )
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    records, errors = read_records(path, load_rules(), NOON)
    assert errors == []
    assert [record.line for record in records] == [ExpLine(user_id="bom-1", exp=10)]
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # two marks: the second is text
    assert read_records(path, load_rules(), NOON)[0] == []


def test_a_csv_number_is_ascii_digits_and_a_json_lines_number_a_json_integer(
    tmp_path: Path,
) -> None:
    """Found by reviewer helper-63: CSV took an ``exp`` of ``1e3`` as 1000 but refused ``1.5``
    and ``1e20`` as "got `str`", and JSON Lines refused ``5.0``. One rule, the API's for a
    query's integer (``counters.ids.is_digits``): a CSV number is ASCII digits; a JSON Lines
    number stays a JSON integer."""
    path = tmp_path / "numbers.csv"
    cells = ["1e3", "1.5", "1e20", "+5", " 5", "-1", "\u0661", "1000"]
    path.write_text(
        "kind,user_id,exp,level,xp_amount\n"
        + "".join(f"exp,n-{i},{cell},,\n" for i, cell in enumerate(cells))
        + "exp,n-l,100,2.0,\ntopup,n-t,,,1e2\ntopup,n-t,,,100\n"
    )
    records, errors = read_records(path, load_rules(), NOON)
    assert [str(error) for error in errors] == [
        *(f"line {n}: exp must be a whole number in digits 0-9, got {cell!r}"
          for n, cell in enumerate(cells[:-1], start=2)),
        "line 10: level must be a whole number in digits 0-9, got '2.0'",
        "line 11: xp_amount must be a whole number in digits 0-9, got '1e2'",
    ]  # fmt: skip
    assert [(r.line_number, r.line) for r in records] == [
        (9, ExpLine(user_id="n-7", exp=1000)),
        (12, TopupLine(user_id="n-t", xp_amount=100)),
    ]
    lines = [{"kind": "exp", "user_id": "j-1", "exp": 5.0}, {"kind": "exp", "user_id": "j-2",
             "exp": 5}]  # fmt: skip
    records, errors = read_records(write_jsonl(tmp_path / "n.jsonl", lines), load_rules(), NOON)
    assert [str(error) for error in errors] == ["line 1: Expected `int`, got `float` - at `$.exp`"]
    assert [record.line for record in records] == [ExpLine(user_id="j-2", exp=5)]


@pytest.fixture
async def importing(
    settings: Settings, clock: ManualClock
) -> AsyncIterator[tuple[Services, ImportService]]:
    """The service's parts and an importer on them (Redis only)."""
    services = Services.build(settings, clock=clock)
    importer = ImportService(
        services.rules, services.scripts, services.redis, NoDurableStore(), clock,
        buckets=settings.key_buckets,
    )  # fmt: skip
    try:
        yield services, importer
    finally:
        await services.close()


@pytest.mark.anyio
async def test_an_import_while_the_service_serves_loses_no_award(
    importing: tuple[Services, ImportService], redis_client: redis.Redis
) -> None:
    """Imports and support corrections racing on one user: every one of them counts."""
    services, importer = importing
    lines = [ExpLine(user_id="busy", exp=n) for n in range(1, 41)]
    records = [Record(n, line, f"imp_{n:032x}") for n, line in enumerate(lines, start=1)]
    await asyncio.gather(
        *(importer.apply(record) for record in records),
        *(services.exp.adjust("busy", 3, "race", "support", None) for _ in range(40)),
    )
    again = await asyncio.gather(*(importer.apply(record) for record in records))
    assert set(again) == {XpOutcome.UNCHANGED}
    assert user(redis_client, "busy")["exp"] == str(sum(range(1, 41)) + 40 * 3)


@pytest.mark.anyio
async def test_an_import_line_past_the_maximum_is_skipped_and_changes_nothing(
    importing: tuple[Services, ImportService], redis_client: redis.Redis
) -> None:
    """lua/lib/bounds.lua: a line that would take the total past MAX_TOTAL writes nothing."""
    _, importer = importing
    first = Record(1, ExpLine(user_id="near", exp=5), f"imp_{1:032x}")
    assert await importer.apply(first) is XpOutcome.DONE
    [key] = redis_client.keys("*:user:near")
    redis_client.hset(key, "exp", MAX_TOTAL - 5)
    before = {key: redis_client.dump(key) for key in redis_client.keys("*")}
    past = Record(2, ExpLine(user_id="near", exp=6), f"imp_{2:032x}")
    assert await importer.apply(past) is XpOutcome.TOTAL_LIMIT
    assert {key: redis_client.dump(key) for key in redis_client.keys("*")} == before


def test_a_line_naming_a_reserved_actor_is_refused_and_imports_nothing(
    redis_url: str, database_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A black-box finding: ``{"kind": "exp", "user_id": "system", ...}`` was imported, a user
    the ledger could not tell from the service's own actor."""
    reserved = ["system", "import", "reconcile", "service:1", "user:x"]
    lines = [
        LINES[0],
        *({"kind": "exp", "user_id": actor, "exp": 5} for actor in reserved),
        {"kind": "topup", "user_id": "system", "xp_amount": 5},
        {"kind": "subscription", "user_id": "import", "tier": "pixel_rookie"},
    ]
    path = write_jsonl(tmp_path / "reserved.jsonl", lines)
    result = run_import(redis_url, database_url, str(path))
    assert result.exit_code == 2, result.output
    refused = [line for line in result.output.splitlines() if "reserved actor" in line]
    assert [line.partition(":")[0] for line in refused] == [f"line {n}" for n in range(2, 9)]
    assert all("user_id" in line for line in refused), refused
    assert data_keys(redis_client) == []
    assert ledger(database_url) == []
