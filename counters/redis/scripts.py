"""The Lua scripts registered once per Redis client; the call site is one line.

A script's reply is a fixed-shape array whose first element is an outcome code. Callers decode it
into a typed result; a code they do not know is a ``ScriptReplyError``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

import lua
from counters.errors import StorageError
from counters.redis.pipelining import AutoPipeline, CommandError

# Reply code shared by every script that touches a user: the user is missing and must be
# hydrated from the durable store before the operation can run (see counters/redis/hydration.py).
NEEDS_HYDRATION = 6

Arg = str | int | float

# A script (or library) whose first line is ``-- requires: a, b`` runs with ``lua/lib/a.lua`` and
# ``lua/lib/b.lua`` first.
_REQUIRES = re.compile(r"^--\s*requires:\s*([a-z0-9_, ]+?)\s*$")


def script_names() -> list[str]:
    """Every ``lua/*.lua`` file, without its suffix."""
    files = importlib.resources.files(lua.__name__).iterdir()
    return sorted(f.name[: -len(".lua")] for f in files if f.name.endswith(".lua"))


def _requires(text: str) -> list[str]:
    match = _REQUIRES.match(text.split("\n", 1)[0])
    return (
        [] if match is None else [lib.strip() for lib in match.group(1).split(",") if lib.strip()]
    )


def script_source(name: str) -> str:
    """The text Redis runs for ``lua/<name>.lua``: the libraries it requires (and theirs, each
    once, dependencies first), then the script."""
    lib_dir = importlib.resources.files(lua.__name__).joinpath("lib")
    included: dict[str, str] = {}

    def include(lib: str) -> None:
        if lib not in included:
            text = lib_dir.joinpath(f"{lib}.lua").read_text("utf-8")
            for needed in _requires(text):
                include(needed)
            included[lib] = text

    text = lua.source(name)
    for lib in _requires(text):
        include(lib)
    return "\n".join([*included.values(), text])


class Scripts:
    """Every script in ``lua/``, registered on one client (EVALSHA, loaded on first miss).

    With an ``AutoPipeline`` the calls go through it (coalesced per event-loop tick, see
    counters/redis/pipelining.py); without one, through the client's connection pool.
    """

    def __init__(self, redis: Redis, pipeline: AutoPipeline | None = None) -> None:
        self._redis = redis
        self._pipeline = pipeline
        self._sources = {name: script_source(name) for name in script_names()}
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._sources.items()
        }
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(text) for name, text in self._sources.items()
        }

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """Run one script: one round trip. Redis failures become ``StorageError``."""
        if self._pipeline is not None:
            command = ("EVALSHA", self._shas[name], len(keys), *keys, *args)
            try:
                reply = await self._pipeline.submit(*command)
            except CommandError as exc:
                reply = await self._after_refusal(self._pipeline, name, command, exc)
        else:
            try:
                reply = await self._scripts[name](keys=keys, args=args)
            except RedisError as exc:
                raise StorageError(f"{name}: {exc}") from exc
        assert isinstance(reply, list)
        return reply

    async def get(self, key: str) -> str | None:
        """A plain GET, through the auto-pipeline when there is one."""
        try:
            if self._pipeline is not None:
                value = await self._pipeline.submit("GET", key)
            else:
                value = await self._redis.get(key)
        except RedisError as exc:
            raise StorageError(f"GET: {exc}") from exc
        return None if value is None else str(value)

    async def aclose(self) -> None:
        """Close the auto-pipeline's connection (the client's pool is closed by its owner)."""
        if self._pipeline is not None:
            await self._pipeline.aclose()

    async def run_many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Arg]]]
    ) -> list[list[Any] | StorageError]:
        """Run one script many times in one pipelined round trip (not a transaction: each call
        is atomic on its own). A call Redis refused gets its ``StorageError`` in its place; a
        lost connection raises ``StorageError`` for them all."""
        if self._pipeline is not None:
            return await self._evalsha_many(self._pipeline, name, calls)
        sha = self._shas[name]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
            if missing:
                await self._redis.script_load(self._sources[name])
                for i in missing:
                    keys, args = calls[i]
                    pipe.evalsha(sha, len(keys), *keys, *args)
                for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        except RedisError as exc:
            raise StorageError(f"{name}: {exc}") from exc
        return [
            StorageError(f"{name}: {reply}") if isinstance(reply, Exception) else reply
            for reply in replies
        ]

    async def _after_refusal(
        self, pipeline: AutoPipeline, name: str, command: tuple[Arg, ...], exc: CommandError
    ) -> Any:
        """Redis refused a script call: load the script and run the call again if Redis did not
        know it (restarted, failed over, SCRIPT FLUSH); otherwise the refusal, named."""
        if not _is_noscript(exc):
            raise CommandError(f"{name}: {exc}") from exc
        await pipeline.execute("SCRIPT", "LOAD", self._sources[name])
        try:
            return await pipeline.execute(*command)
        except CommandError as again:
            raise CommandError(f"{name}: {again}") from again

    async def _evalsha_many(
        self,
        pipeline: AutoPipeline,
        name: str,
        calls: Sequence[tuple[Sequence[str], Sequence[Arg]]],
    ) -> list[Any]:
        sha = self._shas[name]
        commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await pipeline.execute_many(commands)
        missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
        if missing:  # Redis restarted or SCRIPT FLUSH: load once, then run those calls again
            await pipeline.execute("SCRIPT", "LOAD", self._sources[name])
            again = await pipeline.execute_many([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return [
            CommandError(f"{name}: {reply}") if isinstance(reply, CommandError) else reply
            for reply in replies
        ]


def _is_noscript(reply: object) -> bool:
    """Redis does not know the script (restarted, failed over, or SCRIPT FLUSH)."""
    if isinstance(reply, CommandError):
        return str(reply).startswith("NOSCRIPT")
    return isinstance(reply, NoScriptError)
