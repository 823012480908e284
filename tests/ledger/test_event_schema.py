"""Every event a Lua script writes decodes as the ledger's one schema (persistence/events.py)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime

import msgspec
import pytest

from counters.auth import Principal
from counters.bulkimport.records import ExpLine, Record, TopupLine
from counters.bulkimport.service import ImportService
from counters.clock import ManualClock
from counters.redis import keys
from counters.redis.calls import (
    AssignEntity,
    AssignEntityKeys,
    CompleteBucket,
    MetaKey,
    OpenBucket,
)
from counters.redis.hydration import NoDurableStore
from counters.runtime.services import Services
from counters.settings import Settings
from persistence.events import COMPACT, Event, ExpAward, XpCapture, expand, parse

pytestmark = pytest.mark.anyio


class _CompleteBuckets(NoDurableStore):
    """A durable store's may_create ("0"): users are new only because their bucket is complete."""

    may_create = False
    may_create_code = "0"


async def test_every_event_the_scripts_write_decodes_as_the_union(
    settings: Settings, clock: ManualClock
) -> None:
    # As with a durable store (records are ledgered), on buckets marked complete (users are new)
    svc = Services.build(settings, clock=clock, hydrator=_CompleteBuckets())
    user, buckets = "schema-user", settings.key_buckets
    try:
        for bucket in range(buckets):
            meta = MetaKey(keys.meta_key(bucket))
            run = (await svc.scripts.run(meta, OpenBucket()))[1]
            await svc.scripts.run(meta, CompleteBucket(run=run))
        await svc.exp.award(Principal(user, "svc", True), "daily_chat", None, None)
        await svc.exp.adjust(user, 5, "support fix", "support", None)
        entity = keys.EntityKeys.of("character", "c1", buckets)
        await svc.scripts.run(
            AssignEntityKeys(entity=entity.owner, events=entity.events, meta=entity.meta),
            AssignEntity(
                owner_id=user, mode="claim", ledger="1", target="character:c1", may_create="1",
                version=0, now_ms=int(clock.now() * 1000),
            ),
        )  # fmt: skip
        xp = svc.xp
        await xp.set_subscription(user, "svc", "pixel_rookie", None, None)
        soon = datetime.fromtimestamp(clock.now() + 60, UTC)
        await xp.grant(user, "svc", 50, "promo", soon, None)
        debit = await xp.charge(user, "svc", "NEW_IMAGE", False, None)
        await xp.refund(user, "svc", debit.ref, None)
        captured = await xp.charge(user, "svc", "NEW_IMAGE", True, None)
        await xp.capture(user, "svc", captured.ref, None, None)
        released = await xp.charge(user, "svc", "NEW_IMAGE", True, None)
        await xp.release(user, "svc", released.ref, None)
        await xp.charge(user, "svc", "NEW_IMAGE", True, None)  # left to expire
        clock.advance(xp.hold_ttl + 1)  # the hold and the top-up expire on the next touch
        await xp.cancel_subscription(user, "svc", None)
        clock.advance(40 * 86_400)  # the period ends: allocation expired, subscription ended
        await xp.state(user)
        importer = ImportService(
            svc.rules, svc.scripts, svc.redis, NoDurableStore(), clock, buckets=buckets
        )
        for n, line in enumerate(
            (ExpLine(user_id=user, exp=40), TopupLine(user_id=user, xp_amount=5))
        ):
            await importer.apply(Record(n + 1, line, f"imp_{n:032x}"))

        decoded = []
        for bucket in range(buckets):
            stream = keys.stream_key(bucket)
            for sid, fields in await svc.redis.xrange(stream):
                assert list(fields) == [COMPACT]  # every script writes the compact format
                named = expand(fields)
                decoded.append(msgspec.convert(named, Event, strict=False))
                # Read positionally or by name (as an older worker wrote it): the same event,
                # its totals in the same order (the ledger row's JSON text)
                compact, by_name = parse(stream, sid, fields), parse(stream, sid, named)
                assert compact == by_name
                assert list(getattr(compact, "totals", ())) == list(getattr(by_name, "totals", ()))
    finally:
        await svc.close()
    kinds = {type(event) for event in decoded}
    assert kinds == set(typing.get_args(Event))  # every kind written, each as declared
    award = next(event for event in decoded if isinstance(event, ExpAward))
    assert (award.user, award.action, award.seq) == (user, "daily_chat", 1)
    capture = next(event for event in decoded if isinstance(event, XpCapture))
    assert capture.xp_captured == abs(captured.amount) > 0  # the whole hold was captured


async def test_an_event_that_drifts_from_the_schema_is_refused() -> None:
    award = {
        "event_id": "u:1", "user": "u", "seq": "1", "ts": "1", "kind": "exp_award",
        "amount": "5", "day": "20261130", "exp": "5", "level": "1",
    }  # fmt: skip
    assert isinstance(msgspec.convert(award, Event, strict=False), ExpAward)
    for drifted in ({**award, "bonus": "1"}, {**award, "kind": "exp_gift"}, {**award, "seq": "x"}):
        try:
            msgspec.convert(drifted, Event, strict=False)
        except msgspec.ValidationError:
            continue
        raise AssertionError(f"{drifted} decoded")
