"""counters.tasks: a shielded awaitable that fails after its caller gave up leaves nothing for
asyncio to report as "never retrieved" (what failed CI in session 12: asyncpg's own shielded
release failing after a stopped Postgres, its caller already cancelled); asyncpg's waiters
left failed where nobody can reach them are logged, and only those (CI, session 13)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from asyncpg.exceptions import ConnectionDoesNotExistError

from counters.tasks import cancel_and_wait, log_orphaned_driver_futures, shielded

pytestmark = pytest.mark.anyio


class Gone(Exception):
    """The failure that arrives after the caller stopped waiting."""


async def _fails_later(started: asyncio.Event, proceed: asyncio.Event) -> None:
    started.set()
    await proceed.wait()
    raise Gone("connection was closed in the middle of operation")


async def _reported(wrap: bool) -> list[dict[str, Any]]:
    """What the loop's exception handler saw once a caller, cancelled while awaiting an inner
    shielded task (as asyncpg's Pool.release shields its own), let that task fail."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        started, proceed = asyncio.Event(), asyncio.Event()

        async def release() -> None:  # Pool.release's shape: a shield the caller cannot reach
            await asyncio.shield(_fails_later(started, proceed))

        caller = asyncio.ensure_future(shielded(release()) if wrap else release())
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        proceed.set()
        for _ in range(5):
            await asyncio.sleep(0)
        del caller
        gc.collect()  # a never-retrieved exception is reported when its task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    return seen


async def test_a_failure_nobody_waits_for_any_more_is_retrieved() -> None:
    reported = await _reported(wrap=True)
    assert not [c for c in reported if isinstance(c.get("exception"), Gone)], reported


async def test_without_it_asyncio_reports_the_failure_the_caller_left() -> None:
    """The control: the same shape unwrapped is reported, so the test above can fail."""
    reported = await _reported(wrap=False)
    assert [c for c in reported if isinstance(c.get("exception"), Gone)], reported


async def _orphan(exc: BaseException) -> None:
    """A bare future failed with ``exc`` and dropped unretrieved (as asyncpg's protocol leaves
    a waiter whose coroutine was cancelled), then collected."""
    future = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    del future
    gc.collect()
    await asyncio.sleep(0)


async def test_an_orphaned_asyncpg_waiter_is_logged_and_everything_else_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``log_orphaned_driver_futures``: asyncpg's ConnectionDoesNotExistError on a bare future
    nobody can retrieve (CI, sessions 12 and 13) is a warning; any other report, another
    exception on a bare future or asyncpg's error on a task, still reaches the handler the
    loop had (here a recorder, standing for anyio's test runner or asyncio's default)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        log_orphaned_driver_futures()
        log_orphaned_driver_futures()  # idempotent: one filter, not two
        lost = ConnectionDoesNotExistError("connection was closed in the middle of operation")
        with caplog.at_level("WARNING", logger="counters.tasks"):
            await _orphan(lost)
        assert not seen
        assert "a connection was lost while nobody waited on it" in caplog.text
        await _orphan(Gone("ours"))

        async def fails() -> None:
            raise ConnectionDoesNotExistError("in a task of ours")

        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0)
        del task
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    reported = [type(c.get("exception")).__name__ for c in seen]
    assert reported == ["Gone", "ConnectionDoesNotExistError"], seen


async def _swallows_one_cancel(reached: asyncio.Event) -> None:
    """Goes on after its first cancellation, as a task inside Python 3.11's ``wait_for``
    does when its inner future completes at the moment the cancellation comes."""
    try:
        reached.set()
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(30)  # a restore pass's wait for the ledger


async def test_a_task_that_swallowed_a_cancellation_is_cancelled_again() -> None:
    reached = asyncio.Event()
    task = asyncio.create_task(_swallows_one_cancel(reached))
    await reached.wait()
    async with asyncio.timeout(5):  # one cancel() alone: 30 s
        await cancel_and_wait(task, every=0.05)
    assert task.cancelled()


async def test_a_failure_found_while_stopping_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("broken before shutdown")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert "broken before shutdown" in caplog.text
