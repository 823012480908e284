"""Bad data never stops the ledger: refused at the API when it can be, isolated and quarantined
by the flusher when it gets into a stream anyway, and a ledger that stops advancing shows."""

from __future__ import annotations

from dataclasses import replace

import httpx2
import orjson
import pytest
from starlette.applications import Starlette

from api.app import create_app
from counters.clock import ManualClock
from counters.redis.keys import UserKeys, stream_key
from counters.runtime.durability import flusher_redis
from counters.settings import Settings
from persistence.events import COMPACT, LAYOUTS, SEP
from persistence.flusher import Flusher, stream_lag
from tests.support.core import service_headers
from tests.support.persistence import fetch, fetchval, services, store

pytestmark = pytest.mark.anyio

CONTROL = "must not contain control characters (U+0000-U+001F, U+007F)"


@pytest.mark.parametrize("character", ["\x00", "\n", "\x1b", "\x7f"])
async def test_free_text_with_a_control_character_is_refused_with_422(
    durable_client: httpx2.AsyncClient, character: str
) -> None:
    adjust = await durable_client.post(
        "/api/admin/exp/adjust",
        json={"user_id": "ann", "delta": 5, "reason": f"ticket{character}1"},
        headers=service_headers(),
    )
    grant = await durable_client.post(
        "/api/v1/xp/grants",
        json={"user_id": "ann", "xp_amount": 5, "reason": f"promo{character}"},
        headers=service_headers(),
    )
    for refused in (adjust, grant):
        assert refused.status_code == 422
        assert refused.json()["detail"] == f"Invalid request: `$.reason` {CONTROL}"
    fine = await durable_client.post(
        "/api/admin/exp/adjust",
        json={"user_id": "ann", "delta": 5, "reason": "ticket \u00e9 1 \u2713"},
        headers=service_headers(),
    )
    assert fine.status_code == 200


def event(user: str, seq: int, **extra: str | int) -> dict[str, str | int]:
    return {
        "event_id": f"{user}:{seq}", "user": user, "seq": seq, "ts": 1_700_000_000_000,
        "kind": "exp_adjust", "action": "adjust", "amount": 1, "exp": seq, "level": 1, **extra,
    }  # fmt: skip


async def test_bad_entries_are_isolated_and_quarantined_and_the_rest_is_ledgered(
    durable_app: Starlette, durable_settings: Settings
) -> None:
    """Three kinds of poison among good events in one batch: a NUL (Postgres text cannot hold
    it), bytes that are not UTF-8, and a row Postgres itself refuses (a CHECK constraint added
    for the test). The batch is split until each is alone; all else is ledgered."""
    redis = services(durable_app).redis
    stream = UserKeys.of("ann", 16).events
    for seq in range(1, 41):
        fields = event("ann", seq)
        if seq == 7:
            fields["reason"] = "nul\x00inside"
        if seq == 19:
            fields["action"] = "poison"
        await redis.xadd(stream, fields)
    # Not UTF-8: written as raw bytes, as a script or another client could.
    await redis.execute_command(
        "XADD", stream, "*", *_flat(event("ann", 41, note="x")), "b", b"\xff\xfe"
    )
    for seq in range(42, 50):
        await redis.xadd(stream, event("ann", seq))
    async with store(durable_app).connection("test") as conn:
        await conn.execute(
            "ALTER TABLE ledger ADD CONSTRAINT no_poison CHECK (action <> 'poison') NOT VALID"
        )
    client = flusher_redis(durable_settings)
    try:
        flusher = Flusher(client, store(durable_app), buckets=16, block_ms=10)
        handled = await flusher.drain(max_failures=1)
    finally:
        await client.aclose()
        async with store(durable_app).connection("test") as conn:
            await conn.execute("ALTER TABLE ledger DROP CONSTRAINT no_poison")
    assert handled == 49
    assert flusher.stats.quarantined == 3 and flusher.stats.split_writes > 0
    seqs = [r["seq"] for r in await fetch(durable_app, "SELECT seq FROM ledger ORDER BY seq")]
    assert seqs == [s for s in range(1, 50) if s not in (7, 19, 41)]
    rows = await fetch(
        durable_app, "SELECT reason, fields FROM ledger_quarantine ORDER BY stream_id"
    )
    assert len(rows) == 3
    assert rows[0]["reason"] == "a NUL character (Postgres text cannot hold it)"
    assert '"nul\\\\x00inside"' in rows[0]["fields"]  # escaped, and reversible
    assert "no_poison" in rows[1]["reason"]
    assert '"\\\\xff\\\\xfe"' in rows[2]["fields"]
    assert (await stream_lag(redis, [stream])).events == 0
    assert await fetchval(durable_app, "SELECT seq FROM user_totals WHERE user_id = 'ann'") == 49


def _flat(fields: dict[str, str | int]) -> list[str | int]:
    return [item for pair in fields.items() for item in pair]


async def test_readyz_shows_a_ledger_that_stopped_advancing(
    durable_settings: Settings, clock: ManualClock
) -> None:
    settings = replace(durable_settings, flush_stall_seconds=5)
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://c") as client:
            redis = services(app).redis
            now_ms = int((await redis.time())[0]) * 1000
            await redis.xadd(stream_key(2), event("bob", 1), id=f"{now_ms - 60_000}-0")
            stalled = await client.get("/readyz")
            strict = await client.get("/readyz?strict=1")
    assert stalled.status_code == 200
    body = stalled.json()
    assert body["status"] == "degraded" and body["postgres"] == "ok"
    assert body["flusher"]["stalled"].startswith("oldest unledgered event is 6")
    assert strict.status_code == 503


def compact(user: str, number: int, /, **changed: str | int) -> dict[str, str]:
    """An ``exp_adjust`` entry in the compact format, as this release's scripts write it, with
    ``changed`` fields."""
    named = {**event(user, number), **changed}
    layout = LAYOUTS["exp_adjust"]
    return {COMPACT: SEP.join([str(named["kind"]), *(str(named.get(n, "")) for n in layout)])}


async def test_bad_compact_entries_are_quarantined_with_their_reason(
    durable_app: Starlette, durable_settings: Settings
) -> None:
    """Compact entries that cannot be ledgered: a field too many (a separator inside a field) or
    too few, a NUL, a number that is not an integer or out of bigint's range, an unknown kind,
    a missing seq. Each is set aside with its reason as it was written; the good ones around
    them are ledgered."""
    redis = services(durable_app).redis
    stream = UserKeys.of("ann", 16).events
    bad = {
        3: ({"action": f"two{SEP}fields"}, "exp_adjust entry with 12 fields, its layout has 11"),
        5: ({"action": "nul\x00inside"}, "a NUL character (Postgres text cannot hold it)"),
        8: ({"exp": "1e3"}, "invalid literal for int() with base 10: '1e3'"),
        9: ({"amount": 2**63}, "amount out of range"),
        11: ({"kind": "exp_gift"}, "unknown kind 'exp_gift'"),
        12: ({"ts": -1}, "ts out of range"),
        13: ({"seq": ""}, "missing seq"),
    }
    for seq in range(1, 16):
        changed, _ = bad.get(seq, ({}, ""))
        await redis.xadd(stream, compact("ann", seq, **changed))
    short = SEP.join(compact("ann", 16)[COMPACT].split(SEP)[:-1])
    await redis.xadd(stream, {COMPACT: short})
    client = flusher_redis(durable_settings)
    try:
        flusher = Flusher(client, store(durable_app), buckets=16, block_ms=10)
        assert await flusher.drain(max_failures=1) == 16
    finally:
        await client.aclose()
    seqs = [r["seq"] for r in await fetch(durable_app, "SELECT seq FROM ledger ORDER BY seq")]
    assert seqs == [s for s in range(1, 16) if s not in bad]
    rows = await fetch(
        durable_app, "SELECT reason, fields FROM ledger_quarantine ORDER BY stream_id"
    )
    reasons = [reason for _, reason in bad.values()]
    assert [r["reason"] for r in rows] == [
        *reasons,
        "exp_adjust entry with 10 fields, its layout has 11",
    ]
    assert all(list(orjson.loads(r["fields"])) == [COMPACT] for r in rows)  # kept as written
    assert (await stream_lag(redis, [stream])).events == 0


async def test_a_record_naming_a_key_no_record_has_is_quarantined(
    durable_app: Starlette, durable_settings: Settings
) -> None:
    """An attacker's finding: a forged ``record`` entry naming ``ctr:{bN}:user:<uid>`` was
    ledgered into ``redis_records``; after a Redis loss the recovery wrote it back before the
    user, so the user's hash was a string and every request of theirs answered 503 until the
    forged expiry. A record must name an idempotency, award or XP record key of its stream's
    bucket (an XP record, of its scope's user); any other is set aside with the reason."""
    redis = services(durable_app).redis
    ann = UserKeys.of("ann", 16)
    other = next(k for n in range(99) if (k := UserKeys.of(f"u{n}", 16)).tag != ann.tag)
    good = [
        ann.xp_transaction("xd_1"),
        ann.idempotency("service:0", "k1"),
        ann.award_record("ab12"),
    ]
    not_a_record = "record key is not an idempotency, award or XP record key"
    forged = {
        ann.user: not_a_record,
        ann.day("20261130"): not_a_record,
        f"{ann.tag}:idem:not-hex": not_a_record,
        other.idempotency("service:0", "k1"): "record key of another bucket than its stream's",
        f"{ann.tag}:xptx:bob:xd_2": "XP record key of another user than its scope",
    }
    for key in [*good, *forged]:
        entry = SEP.join(["record", "ann", key, "9999999999999", "1", "poison"])
        await redis.xadd(ann.events, {COMPACT: entry})
    client = flusher_redis(durable_settings)
    try:
        flusher = Flusher(client, store(durable_app), buckets=16, block_ms=10)
        assert await flusher.drain(max_failures=1) == len(good) + len(forged)
    finally:
        await client.aclose()
    kept = await fetch(durable_app, "SELECT key FROM redis_records ORDER BY key")
    assert sorted(r["key"] for r in kept) == sorted(good)
    rows = await fetch(durable_app, "SELECT reason FROM ledger_quarantine ORDER BY stream_id")
    assert [r["reason"] for r in rows] == list(forged.values())
