"""A flusher frozen with its transaction open does not hold the ledger up for everyone."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest
from starlette.applications import Starlette

from counters.errors import StorageError
from counters.redis.keys import UserKeys
from persistence import writer
from persistence.events import LedgerEvent
from persistence.store import is_transient, plain_on_loopback
from persistence.webhooks.outbox import OutboxPolicy, OutboxRow
from tests.support.persistence import fetchval, flusher, services, store

pytestmark = pytest.mark.anyio


FREEZE_SECONDS = 1.0


class Frozen(OutboxPolicy):
    """Freezes the whole process (a blocking sleep: the event loop stops, as under SIGSTOP)
    inside the flush transaction, after its ledger rows were written."""

    def rows(self, events: list[LedgerEvent]) -> list[OutboxRow]:
        time.sleep(FREEZE_SECONDS)
        return []


async def _one_event(app: Starlette) -> None:
    """One EXP event of user ann in her bucket's stream, as a script writes it."""
    svc = services(app)
    ann = UserKeys.of("ann", svc.settings.key_buckets)
    await svc.redis.xadd(
        ann.events,
        {"event_id": "ann:1", "user": "ann", "seq": 1, "ts": 1_700_000_000_000,
         "kind": "exp_adjust", "action": "adjust", "amount": 5, "exp": 5, "level": 1},
    )  # fmt: skip


async def test_a_flush_transaction_left_idle_by_a_frozen_process_is_ended(
    durable_app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker's finding: the flush-lease holder SIGSTOPped while its batch's transaction
    was open (its ledger rows written, its users' totals locked) stopped every other worker's
    flush for as long as it stayed frozen, and 30 s later every write got 503. Postgres now
    ends a flush transaction idle past ``IDLE_IN_TRANSACTION_MS``: the frozen write fails
    with a transient error (retried, nothing quarantined) and nothing of it stays."""
    monkeypatch.setattr(writer, "IDLE_IN_TRANSACTION_MS", 200)
    svc = services(durable_app)
    await _one_event(durable_app)
    frozen = flusher(durable_app)
    rules = svc.rules
    store(durable_app).outbox = Frozen(lambda: rules)
    try:
        with pytest.raises(StorageError) as raised:
            await frozen.flush_once(block=False)
    finally:
        store(durable_app).outbox = None
    assert is_transient(raised.value), raised.value  # retried, never split and quarantined
    assert frozen.stats.quarantined == 0
    assert await fetchval(durable_app, "SELECT count(*) FROM ledger") == 0  # rolled back
    assert await flusher(durable_app, claim_idle_ms=0).drain(max_failures=1) == 1
    assert await fetchval(durable_app, "SELECT exp FROM user_totals WHERE user_id = 'ann'") == 5


@pytest.mark.parametrize(
    ("url", "ssl"),
    [
        ("postgresql://u:p@127.0.0.1:5999/db", False),
        ("postgresql://u:p@localhost/db", False),
        ("postgresql://u:p@[::1]:5999/db", False),
        ("postgresql://u:p@127.0.0.1:5999/db?sslmode=require", None),
        ("postgresql://u:p@db.example.com/db", None),
    ],
)
def test_the_pool_skips_the_tls_request_on_loopback_unless_the_url_asks(
    url: str, ssl: bool | None
) -> None:
    """No TLS round trip (and no stray unread future when a connect times out in it) where TLS
    protects nothing; a URL's own sslmode and any other host keep asyncpg's default."""
    assert plain_on_loopback(url) is ssl


async def test_a_flush_frozen_in_the_middle_of_a_copy_is_ended(
    durable_app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same freeze, in the middle of a COPY (its first rows sent, the rest not): Postgres
    waits for data there, which is not idle, so the idle timeout did not end it and the batch's
    locks stayed held for as long as the process stayed frozen. ``STATEMENT_TIMEOUT_MS`` now
    cancels it (transient, retried: nothing quarantined, nothing of it kept)."""
    monkeypatch.setattr(writer, "STATEMENT_TIMEOUT_MS", 200)
    totals_rows = writer._totals_rows

    def frozen_halfway(events: list[LedgerEvent]) -> Iterator[Sequence[object]]:
        rows = iter(totals_rows(events))
        yield next(rows)  # COPY has begun: Postgres waits for the rest
        time.sleep(FREEZE_SECONDS)  # the event loop stops, as under SIGSTOP
        yield from rows

    await _one_event(durable_app)
    frozen = flusher(durable_app)
    monkeypatch.setattr(writer, "_totals_rows", frozen_halfway)
    with pytest.raises(StorageError) as raised:
        await frozen.flush_once(block=False)
    monkeypatch.setattr(writer, "_totals_rows", totals_rows)
    assert is_transient(raised.value), raised.value
    assert frozen.stats.quarantined == 0
    assert await fetchval(durable_app, "SELECT count(*) FROM ledger") == 0  # rolled back
    assert await flusher(durable_app, claim_idle_ms=0).drain(max_failures=1) == 1
