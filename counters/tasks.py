"""Tasks whose outcome nobody may be left waiting for.

A task that fails after every caller stopped waiting (each was cancelled, or timed out) has its
exception logged by asyncio as "never retrieved", and under a test runner that raises what the
loop's exception handler sees (anyio's), it fails an unrelated test. ``retrieve`` marks such an
outcome as seen; ``shielded`` runs an awaitable to its end whoever stops waiting, with it;
``log_orphaned_driver_futures`` covers the one such future a driver keeps out of reach;
``cancel_and_wait`` stops a task even when something inside it swallowed a cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("counters.tasks")


def retrieve(task: asyncio.Future[Any]) -> None:
    """A done callback: mark ``task``'s exception as seen (its waiters, if any, still get it)."""
    if not task.cancelled():
        task.exception()


async def cancel_and_wait(task: asyncio.Future[Any], every: float = 0.1) -> None:
    """Cancel ``task`` and wait until it is done, cancelling it again every ``every`` seconds
    while it runs on; its outcome is retrieved, whatever it is.

    One ``cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for`` swallows the
    cancellation when its inner future completes in the same loop iteration (gh-86296, fixed in
    3.12), and the task goes on. A restore pass cancelled at shutdown at that instant went on
    into its wait for the ledger (30 s with no flusher running): a shutdown that took 30 s,
    about one in fifteen in the suite (found by helper-57). A failure the task ended with is
    logged (a warning), not raised: this is for stopping."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled() and task.exception() is not None:
        log.warning("a task stopped at shutdown had failed: %r", task.exception())


async def shielded(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` as ``asyncio.shield`` does (a cancelled caller leaves it running to
    its end), its failure retrieved even when no caller is left to see it.

    asyncpg's ``Pool.release`` shields its own inner release, which the caller cannot reach: a
    caller cancelled while a stopped Postgres made that release fail left
    ``ConnectionDoesNotExistError`` unretrieved (CI, session 12,
    tests/ledger/test_loss_under_load.py). Wrapping the release here retrieves it."""
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(retrieve)
    return await asyncio.shield(task)


_ORPHANED = "Future exception was never retrieved"


def log_orphaned_driver_futures(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Have ``loop`` (the running one by default) log, as a warning, a bare future of
    asyncpg's that failed with ``ConnectionDoesNotExistError`` after its waiter had stopped
    waiting; every other report goes to the handler it had (a test runner's, or asyncio's
    default) as before. Idempotent.

    asyncpg 0.32's protocol sets that error on its current waiter when the connection drops
    (``_handle_waiter_on_connection_lost``). A waiter whose coroutine was cancelled at the
    wrong moment (a connect or an operation cut by our timeouts while Postgres went down)
    is still pending then, and nobody can retrieve it: asyncio reports it as an error, and
    anyio's test runner raises it in whatever test runs (CI, sessions 12 and 13:
    tests/ledger/test_loss_under_load.py, reproduced 1 time in ~20 with the handler's context
    printed: ``<Future finished exception=ConnectionDoesNotExistError(...)>``, no task). The
    connection is gone and the caller has its own error already; only the report is changed.
    """
    loop = loop or asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    if getattr(previous, "orphan_filter", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        future = context.get("future")
        exc = context.get("exception")
        if (
            context.get("message") == _ORPHANED
            and future is not None
            and not isinstance(future, asyncio.Task)
            and type(exc).__name__ == "ConnectionDoesNotExistError"
            and type(exc).__module__.startswith("asyncpg")
        ):
            log.warning("asyncpg: a connection was lost while nobody waited on it: %s", exc)
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    handler.orphan_filter = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
