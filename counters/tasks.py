"""Tasks whose outcome nobody may be left waiting for.

A task that fails after every caller stopped waiting (each was cancelled, or timed out) has its
exception logged by asyncio as "never retrieved", and under a test runner that raises what the
loop's exception handler sees (anyio's), it fails an unrelated test. ``retrieve`` marks such an
outcome as seen; ``shielded`` runs an awaitable to its end whoever stops waiting, with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


def retrieve(task: asyncio.Future[Any]) -> None:
    """A done callback: mark ``task``'s exception as seen (its waiters, if any, still get it)."""
    if not task.cancelled():
        task.exception()


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
