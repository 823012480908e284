"""Old Redis Functions libraries are retired, and a process still using one gets it back.

Every rules version (and every code version) is a library of its own, and Redis kept them all
for the deployment's life (counters/redis/scripts.py, "Retiring libraries"). A library nobody
loaded for a day goes when another is loaded; one in use comes back through the ordinary
"Function not found" recovery. Time is the ``ctr:libraries`` record, set back by hand: the
service never sleeps a day, and neither does this test.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import redis

from counters.clock import ManualClock
from counters.exp.types import AwardResult
from counters.redis.codes import AwardOutcome
from counters.redis.keys import LIBRARIES_KEY, UserKeys
from counters.rules import Rules, load_rules
from counters.runtime.services import Services
from counters.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.both_redis]

_DAY_MS = 86_400_000


def _with_level_2_at(exp_required: int) -> Rules:
    """The shipped rules with level 2 at ``exp_required``: a rules version (a library) of the
    test's own, which no other test loads."""
    rules = load_rules()
    levels = list(rules.exp.levels)
    levels[1] = msgspec.structs.replace(levels[1], exp_required=exp_required)
    return msgspec.structs.replace(
        rules, exp=msgspec.structs.replace(rules.exp, levels=tuple(levels))
    )


def _masters(client: redis.Redis) -> list[redis.Redis]:
    """The client itself (one Redis), or a client of each master of the cluster."""
    nodes = getattr(client, "get_primaries", None)
    if nodes is None:
        return [client]
    return [node.redis_connection for node in nodes()]


def _libraries(client: redis.Redis) -> list[set[str]]:
    """The libraries each master has (one set per master)."""
    found = []
    for node in _masters(client):
        names = set()
        for entry in node.function_list():  # RESP2: a flat list of name, value pairs each
            fields = dict(zip(entry[::2], entry[1::2], strict=True))
            name = fields.get("library_name", fields.get(b"library_name"))
            names.add(name.decode() if isinstance(name, bytes) else str(name))
        found.append(names)
    return found


def _on_every_master(client: redis.Redis, name: str) -> bool | None:
    """True when every master has library ``name``, False when none has, None otherwise."""
    has = {name in names for names in _libraries(client)}
    return has.pop() if len(has) == 1 else None


async def _award(svc: Services, user: str) -> AwardResult:
    action = svc.exp.action("daily_chat")
    unused = UserKeys.of(user, svc.settings.key_buckets).unused
    call = svc.exp.award_call("daily_chat", action, user, user, None, unused, "", "")
    return await svc.exp.run_award(call)


def _library_of(svc: Services) -> str:
    """The library ``svc``'s awards run in (its rules version's)."""
    action = svc.exp.action("daily_chat")
    call = svc.exp.award_call("daily_chat", action, "x", "x", None, "k", "", "").call
    return svc.scripts.library(call).name


def _library(name: str, function: str) -> str:
    """A one-function library's text, for ``FUNCTION LOAD``."""
    return f"#!lua name={name}\nredis.register_function('{function}', function() return 1 end)"


def _loaded_ago(client: redis.Redis, name: str, ms: int) -> None:
    """Record that library ``name`` was last loaded ``ms`` milliseconds ago."""
    client.hset(LIBRARIES_KEY, name, int(time.time() * 1000) - ms)


async def test_a_library_nobody_loaded_for_a_day_goes_and_comes_back_when_used(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    old = Services.build(settings, clock=clock, rules=_with_level_2_at(11))
    new = Services.build(settings, clock=clock, rules=_with_level_2_at(12))
    try:
        assert await old.scripts.connect() and await new.scripts.connect()
        old_library, new_library = _library_of(old), _library_of(new)
        assert old_library != new_library
        assert (await _award(old, "o1")).outcome is AwardOutcome.AWARDED  # loads old's library
        assert old.scripts.retiring is not None
        assert await old.scripts.retiring == []  # recorded; nothing is a day old
        assert _on_every_master(redis_client, old_library)

        _loaded_ago(redis_client, old_library, _DAY_MS - 60_000)  # a day less a minute: kept
        assert (await _award(new, "n1")).level == 2  # 20 EXP >= 12: new's library, loaded
        assert new.scripts.retiring is not None
        assert await new.scripts.retiring == []
        assert _on_every_master(redis_client, old_library)

        _loaded_ago(redis_client, old_library, _DAY_MS + 60_000)  # then a day and a minute
        for node in _masters(redis_client):  # so new loads its library again (and retires)
            node.function_delete(new_library)
        assert (await _award(new, "n2")).level == 2
        assert await new.scripts.retiring == [old_library]
        assert _on_every_master(redis_client, old_library) is False
        assert _on_every_master(redis_client, new_library)
        assert redis_client.hget(LIBRARIES_KEY, old_library) is None

        # The old process still serves: "Function not found" once, its library loaded again
        # (and recorded as loaded now), the award made with its own rules
        result = await _award(old, "o2")
        assert (result.outcome, result.level) == (AwardOutcome.AWARDED, 2)
        assert _on_every_master(redis_client, old_library)
        assert await old.scripts.retiring == []  # new's library is fresh: kept
        assert _on_every_master(redis_client, new_library)
    finally:
        await old.close()
        await new.close()


async def test_only_this_services_stale_libraries_go_and_never_the_ones_in_use(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """A ``counters_*`` library nobody recorded (loaded by a release before this one) is
    recorded when first seen and retired a day later; another application's library is never
    touched, nor one the retiring process uses itself, however old its record."""
    svc = Services.build(settings, clock=clock, rules=_with_level_2_at(13))
    masters = _masters(redis_client)
    older = _library("counters_olderrelease", "f_older")
    foreign = _library("someone_else", "g_else")
    try:
        for node in masters:
            node.function_load(older, replace=True)
            node.function_load(foreign, replace=True)
        assert await svc.scripts.connect()
        await _award(svc, "s1")  # loads this process's library
        assert svc.scripts.retiring is not None
        assert await svc.scripts.retiring == []
        assert redis_client.hget(LIBRARIES_KEY, "counters_olderrelease") is not None  # recorded
        assert _on_every_master(redis_client, "counters_olderrelease")

        own = _library_of(svc)
        _loaded_ago(redis_client, own, 30 * _DAY_MS)
        _loaded_ago(redis_client, "counters_olderrelease", _DAY_MS + 1_000)
        redis_client.hset(LIBRARIES_KEY, "someone_else", 0)  # even if someone wrote it there
        assert await svc.scripts.retire_libraries() == ["counters_olderrelease"]
        assert _on_every_master(redis_client, "counters_olderrelease") is False
        assert _on_every_master(redis_client, "someone_else")
        assert _on_every_master(redis_client, own)
        assert (await _award(svc, "s2")).outcome is AwardOutcome.AWARDED
    finally:
        for node in masters:
            node.function_delete("someone_else")
        await svc.close()


async def test_closing_stops_a_retirement_run_before_it_connects_again(
    settings: Settings, clock: ManualClock, redis_client: redis.Redis
) -> None:
    """A run still going when the service closes is cancelled first: its next command would
    have opened a new connection after the close, left open (found as an unclosed transport
    in a later test)."""

    def clients() -> int:
        return sum(len(node.client_list()) for node in _masters(redis_client))

    before = clients()
    svc = Services.build(settings, clock=clock, rules=_with_level_2_at(14))
    assert await svc.scripts.connect()
    await _award(svc, "c1")  # loads the library: a run starts in the background
    running = svc.scripts.retiring
    assert running is not None and not running.done()
    await svc.close()
    assert running.done()
    await asyncio.sleep(0.2)  # what the run would have sent by now (nothing is waited for)
    assert clients() == before
