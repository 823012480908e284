"""The Lua scripts registered once per Redis client; the call site is one line.

A script's reply is a fixed-shape array whose first element is an outcome code. Callers decode it
into a typed result; a code they do not know is a ``ScriptReplyError``.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

import lua
from counters.errors import StorageError

# Reply code shared by every script that touches a user: the user is missing and must be
# hydrated from the durable store before the operation can run (see counters/hydration.py).
NEEDS_HYDRATION = 6

Arg = str | int | float


def script_names() -> list[str]:
    """Every ``lua/*.lua`` file, without its suffix."""
    files = importlib.resources.files(lua.__name__).iterdir()
    return sorted(f.name[: -len(".lua")] for f in files if f.name.endswith(".lua"))


class Scripts:
    """Every script in ``lua/``, registered on one client (EVALSHA, loaded on first miss)."""

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(lua.source(name)) for name in script_names()
        }

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """Run one script: one round trip. Redis failures become ``StorageError``."""
        try:
            reply = await self._scripts[name](keys=keys, args=args)
        except RedisError as exc:
            raise StorageError(f"{name}: {exc}") from exc
        assert isinstance(reply, list)
        return reply
