"""Creator awards held against a small model (issue #10): random interleavings of likes, forks,
transfers and keyed retries, by users whose ids hash alike and unlike; bursts of the same
request at once; and a crash between any two steps of the protocol (counters/exp/creator.py)."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from counters.auth import Principal
from counters.clock import ManualClock
from counters.errors import ConflictError, IdempotencyMismatch
from counters.exp.creator import _Award
from counters.exp.entities import Target
from counters.exp.types import AwardOutcome
from counters.redis.calls import ReserveCreatorAward, ReserveKeys
from counters.redis.idempotency import Idempotency
from counters.redis.keys import bucket_of, request_digest
from counters.rules import load_rules
from counters.runtime.services import Services
from counters.settings import Settings
from tests.support.core import NOON

RULES = load_rules().exp


def _users() -> list[str]:
    """Two users sharing a bucket and two in buckets of their own: both layouts in every run."""
    names = [f"u{n}" for n in range(100)]
    first = names[0]
    twin = next(u for u in names[1:] if bucket_of(u, 16) == bucket_of(first, 16))
    others = [u for u in names if bucket_of(u, 16) != bucket_of(first, 16)]
    return [
        first,
        twin,
        others[0],
        next(u for u in others if bucket_of(u, 16) != bucket_of(others[0], 16)),
    ]


USERS = _users()
ENTITIES = [Target("character", "c0"), Target("character", "c3")]
OUTCOMES = {
    AwardOutcome.AWARDED: "awarded",
    AwardOutcome.LIMIT_REACHED: "limit",
    AwardOutcome.CAP_REACHED: "cap",
    AwardOutcome.ALREADY_TRIGGERED: "already",
}


def test_the_users_hash_alike_and_unlike() -> None:
    buckets = [bucket_of(user, 16) for user in USERS]
    assert len(set(buckets)) == 3


@dataclass
class Model:
    """Who owns what, who liked or forked what, and what each keyed request answered."""

    owners: dict[Target, str]
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counts: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    gained: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    once: set[tuple[str, Target, str]] = field(default_factory=set)
    answers: dict[tuple[str, str], tuple[tuple[str, Target], tuple[str, str, int]]] = field(
        default_factory=dict
    )

    def award(self, fan: str, name: str, target: Target, key: str | None) -> tuple[str, str, int]:
        """(outcome, awarded_to, exp_added); outcome "conflict" or "mismatch" for errors."""
        if key is not None and (fan, key) in self.answers:
            request, answer = self.answers[fan, key]
            return answer if request == (name, target) else ("mismatch", "", 0)
        owner = self.owners[target]
        action = RULES.actions[name]
        if owner == fan:
            return "conflict", "", 0
        if (name, target, fan) in self.once:
            answer = ("already", "", 0)
        elif action.daily_limit and self.counts[owner, name] >= action.daily_limit:
            answer = ("limit", owner, 0)
        elif self.gained[owner] >= RULES.cap_for(RULES.level_for(self.totals[owner])):
            answer = ("cap", owner, 0)
        else:
            cap = RULES.cap_for(RULES.level_for(self.totals[owner]))
            added = min(action.exp, cap - self.gained[owner])
            self.totals[owner] += added
            self.gained[owner] += added
            self.counts[owner, name] += 1
            self.once.add((name, target, fan))
            answer = ("awarded", owner, added)
        if key is not None:
            self.answers[fan, key] = ((name, target), answer)
        return answer


award_step = st.tuples(
    st.just("award"),
    st.sampled_from(USERS),
    st.sampled_from(["character_liked", "forked"]),
    st.sampled_from(ENTITIES),
    st.sampled_from([None, "k1", "k2"]),
)
transfer_step = st.tuples(
    st.just("transfer"), st.sampled_from(USERS), st.none(), st.sampled_from(ENTITIES), st.none()
)
Step = tuple[str, str, str | None, Target, str | None]


@pytest.fixture
def redis_settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, day_jitter_seconds=0)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.one_of(award_step, award_step, transfer_step), min_size=1, max_size=50))
def test_interleavings_match_the_model(redis_settings: Settings, steps: list[Step]) -> None:
    client = redis.Redis.from_url(str(redis_settings.redis_url))
    client.flushall()
    client.close()
    asyncio.run(_run(redis_settings, steps))


def idem(fan: str, key: str | None, name: str, target: Target) -> Idempotency | None:
    payload = json.dumps([name, str(target)]).encode()
    return Idempotency.of(f"user:{fan}", key, f"POST /api/exp/gain {fan}", payload)


async def _run(config: Settings, steps: list[Step]) -> None:
    services = Services.build(config, clock=ManualClock(NOON))
    model = Model({target: USERS[n] for n, target in enumerate(ENTITIES)})
    try:
        for target, owner in model.owners.items():
            await services.entities.assign(target, owner)
        for kind, user, name, target, key in steps:
            if kind == "transfer":
                await services.entities.assign(target, user)
                model.owners[target] = user
                continue
            assert name is not None
            expected = model.award(user, name, target, key)
            principal = Principal(user, f"user:{user}", False)
            try:
                result = await services.exp.award(
                    principal, name, target, idem(user, key, name, target)
                )
            except ConflictError:
                assert expected[0] == "conflict"
                continue
            except IdempotencyMismatch:
                assert expected[0] == "mismatch"
                continue
            got = OUTCOMES[result.outcome]
            if got == "already":
                assert expected[0] == "already"
            else:
                assert (got, result.awarded_to, result.exp_added) == expected
        for user in USERS:
            assert (await services.exp.usage(user)).total_exp == model.totals[user]
    finally:
        await services.close()


@pytest.mark.anyio
async def test_a_burst_of_the_same_like_pays_once(redis_settings: Settings) -> None:
    services = Services.build(redis_settings, clock=ManualClock(NOON))
    try:
        target = Target("character", "burst")
        await services.entities.assign(target, "maker")
        fan = Principal("fan", "user:fan", False)
        keyed = idem("fan", "k", "character_liked", target)
        same = await asyncio.gather(
            *(services.exp.award(fan, "character_liked", target, keyed) for _ in range(20))
        )
        assert {r.outcome for r in same} == {AwardOutcome.AWARDED}
        assert {(r.awarded_to, r.exp_added) for r in same} == {("maker", 5)}
        other = Target("character", "burst2")
        await services.entities.assign(other, "maker")
        unkeyed = await asyncio.gather(
            *(services.exp.award(fan, "forked", other, None) for _ in range(20))
        )
        assert (
            sorted(r.outcome for r in unkeyed)
            == [AwardOutcome.AWARDED] + [AwardOutcome.ALREADY_TRIGGERED] * 19
        )
        assert (await services.exp.usage("maker")).total_exp == 15
    finally:
        await services.close()


@pytest.mark.anyio
@pytest.mark.parametrize("crash", ["after_reserve", "after_award", "long_ago"])
async def test_a_crash_between_steps_is_completed_once_by_the_next_like(
    redis_settings: Settings, crash: str
) -> None:
    """The process dies after B (or after C): the fan's next like completes that award exactly
    once (to the owner it reserved, though the entity changed hands meanwhile) and gets 409. A
    reservation older than C's record may have lost that record: settled without paying."""
    clock = ManualClock(NOON)
    services = Services.build(redis_settings, clock=clock)
    try:
        target = Target("character", "crash")
        await services.entities.assign(target, "maker")
        action = RULES.actions["character_liked"]
        if crash == "after_award":
            creator = services.exp._creator
            award = _Award("fan", "character_liked", action, target)
            result, settle = await creator._reserve_and_pay(award, "lost-rid", "-", "")
            assert result.outcome is AwardOutcome.AWARDED
            settle.close()  # D never runs
        else:
            keys = services.entities.keys(target)
            reserve = ReserveCreatorAward(
                actor="fan", rid="lost-rid", fingerprint="-", mode="once",
                now_ms=int(NOON * 1000), stale_ms=redis_settings.idempotency_ttl_seconds * 1000,
                once_ttl=86_400, may_create="1",
            )  # fmt: skip
            record = ReserveKeys(
                entity=keys.owner, record=keys.once("character_liked"), meta=keys.meta
            )
            reply = await services.scripts.run(record, reserve)
            assert reply[:2] == [1, "maker"]
        if crash == "long_ago":
            clock.advance(redis_settings.idempotency_ttl_seconds + 1)
        await services.entities.assign(target, "heir")  # a transfer meanwhile
        fan = Principal("fan", "user:fan", False)
        again = await services.exp.award(fan, "character_liked", target, None)
        assert again.outcome is AwardOutcome.ALREADY_TRIGGERED
        paid = 0 if crash == "long_ago" else 5
        assert (await services.exp.usage("maker")).total_exp == paid
        assert (await services.exp.usage("heir")).total_exp == 0
    finally:
        await services.close()


@pytest.mark.anyio
async def test_a_keyed_sale_retried_after_a_crash_and_a_transfer_pays_the_first_owner_once(
    redis_settings: Settings,
) -> None:
    """paid_char_sold is not once per actor: the entity remembers whom a keyed request chose."""
    services = Services.build(redis_settings, clock=ManualClock(NOON))
    try:
        target = Target("character", "sold")
        await services.entities.assign(target, "maker")
        buyer = Principal("buyer", "service:0", True)
        keyed = Idempotency.of("service:0", "sale-1", "POST /api/exp/gain buyer", b"{}")
        assert keyed is not None
        rid = request_digest("service:0", "buyer", "sale-1")
        award = _Award("buyer", "paid_char_sold", RULES.actions["paid_char_sold"], target)
        creator = services.exp._creator
        _, settle = await creator._reserve_and_pay(award, rid, keyed.fingerprint, "sale-1")
        settle.close()  # the process dies before its answer is remembered (E)
        await services.entities.assign(target, "heir")
        retry = await services.exp.award(buyer, "paid_char_sold", target, keyed)
        assert (retry.awarded_to, retry.replayed) == ("maker", True)
        assert (await services.exp.usage("maker")).total_exp == 50
        assert (await services.exp.usage("heir")).total_exp == 0
    finally:
        await services.close()
