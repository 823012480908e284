"""The Lua scripts, sent by their SHA on one transport; the call site is one line.

A call is a typed ``Keys`` and ``Call`` pair (counters/redis/calls.py). A script's reply is a
fixed-shape array whose first element is a code (counters/redis/codes.py); callers decode it into
a typed result, and a code they do not know is a ``ScriptReplyError``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

import lua
from counters.errors import OutcomeUnknown, RedisStorageError, StorageError
from counters.redis.calls import Arg, Call, Keys, command_args
from counters.redis.cluster import ClusterPipeline
from counters.redis.pipelining import AutoPipeline, RedisRefusal

_astuple = msgspec.structs.astuple

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
    """Every script in ``lua/``, sent with EVALSHA on one transport (loaded on first miss).

    The transport is the ``AutoPipeline`` when there is one (calls coalesced per event-loop
    tick, see counters/redis/pipelining.py), else the client's connection pool. Either way a
    call Redis refused is a ``RedisRefusal`` and a lost connection a ``StorageError``, and a
    script Redis does not know (restarted, failed over, SCRIPT FLUSH) is loaded and its calls
    sent again in one place, ``_recover``.
    """

    def __init__(
        self,
        redis: Redis,
        pipeline: AutoPipeline | ClusterPipeline | None = None,
        *,
        one_node: bool | None = None,
    ) -> None:
        self._redis = redis
        # Whether every key is on one Redis (no Cluster): a script may then take keys of several
        # slots (lua/creator_award.lua). None: not when the client is a RedisCluster.
        self.one_node = not isinstance(redis, RedisCluster) if one_node is None else one_node
        self._pipeline = pipeline
        self._sources = {name: script_source(name) for name in script_names()}
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._sources.items()
        }
        self._send: Callable[..., Awaitable[Any]]
        self._send_many: Callable[[Sequence[Sequence[Arg]]], Awaitable[list[Any]]]
        if pipeline is not None:
            self._send, self._send_many = pipeline.submit, pipeline.execute_many
        else:
            self._send, self._send_many = self._pool_send, self._pool_send_many

    async def run(self, keys: Keys, call: Call) -> list[Any]:
        """Run one script: one round trip. A refusal is a ``RedisRefusal`` naming the script;
        other Redis failures are ``StorageError``."""
        command = self.command(keys, call)
        try:
            reply: list[Any] = await self._send(*command)
        except RedisRefusal as exc:
            return await self.refused(call, command, exc)
        return reply

    def command(self, keys: Keys, call: Call) -> tuple[Arg, ...]:
        """The EVALSHA command of one call (what ``send`` takes)."""
        key_values = _astuple(keys)
        return ("EVALSHA", self._shas[call.SCRIPT], len(key_values), *key_values,
                *_astuple(call))  # fmt: skip

    def send(self, command: tuple[Arg, ...]) -> Awaitable[Any]:
        """Send one ``command`` on the transport: with the auto-pipeline a bare future (the hot
        lane's one await per request). A refusal raises ``RedisRefusal``: hand it to
        ``refused``, which is what ``run`` does."""
        return self._send(*command)

    async def refused(self, call: Call, command: tuple[Arg, ...], exc: RedisRefusal) -> list[Any]:
        """The reply of ``command`` after Redis refused it with ``exc``: sent again once the
        script is loaded when Redis did not know it (NOSCRIPT), else the refusal named after
        the script, raised."""
        (again,) = await self._recover([call], [command], [exc])
        if isinstance(again, StorageError):
            raise again from exc
        return again  # type: ignore[no-any-return]

    async def run_many(self, calls: Sequence[tuple[Keys, Call]]) -> list[list[Any] | StorageError]:
        """Run many script calls in one pipelined round trip (not a transaction: each call is
        atomic on its own). A call Redis refused gets its ``RedisRefusal`` in its place; a lost
        connection raises ``StorageError`` for them all."""
        commands = [
            ("EVALSHA", self._shas[call.SCRIPT], *command_args(keys, call)) for keys, call in calls
        ]
        replies = await self._send_many(commands)
        return await self._recover([call for _, call in calls], commands, replies)

    async def _recover(
        self, calls: Sequence[Call], commands: Sequence[Sequence[Arg]], replies: list[Any]
    ) -> list[Any]:
        """The one NOSCRIPT recovery: load each script Redis did not know, send its calls again;
        every refusal left is named after its script."""
        missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
        if missing:
            for script in sorted({calls[i].SCRIPT for i in missing}):
                await self._load(self._sources[script])
            again = await self._send_many([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return [
            RedisRefusal(f"{call.SCRIPT}: {reply}") if isinstance(reply, RedisRefusal) else reply
            for call, reply in zip(calls, replies, strict=True)
        ]

    async def _load(self, source: str) -> None:
        """SCRIPT LOAD on the transport (on a cluster: on every master, where NOSCRIPT is)."""
        if self._pipeline is not None:
            await self._send("SCRIPT", "LOAD", source)
            return
        try:
            await self._redis.script_load(source)
        except RedisError as exc:
            raise RedisStorageError(f"SCRIPT LOAD: {exc}") from exc

    async def send_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Plain commands (each touching the keys of one bucket: one hash slot) in one
        pipelined round trip on the scripts' transport; replies in order, hiredis-parsed
        (RESP2: ``ZRANGE ... WITHSCORES`` is a flat list). Raises ``StorageError`` when a
        command is refused or the connection is lost (reads that loop over buckets, issue #12)."""
        replies = await self._send_many(commands)
        for reply in replies:
            if isinstance(reply, StorageError):
                raise reply
        return replies

    async def get(self, key: str) -> str | None:
        """A plain GET, on the same transport as the scripts."""
        value = await self._send("GET", key)
        return None if value is None else str(value)

    async def aclose(self) -> None:
        """Close the auto-pipeline's connection (the client's pool is closed by its owner)."""
        if self._pipeline is not None:
            await self._pipeline.aclose()

    async def _pool_send(self, *args: Arg) -> Any:
        try:
            return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            raise _refusal(exc) from exc
        except RedisError as exc:
            raise _pool_failure(f"{args[0]}: {exc}", exc) from exc

    async def _pool_send_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            raise _pool_failure(f"pipeline: {exc}", exc) from exc
        return [_refusal(r) if isinstance(r, ResponseError) else r for r in replies]


def _pool_failure(message: str, exc: RedisError) -> RedisStorageError:
    """redis-py's failure as ours: ``OutcomeUnknown`` unless it failed while connecting (then
    the command was never sent). redis-py does not say whether a lost connection lost the
    command before or after writing it, so anything but a failed connect may have run."""
    text = str(exc)
    if isinstance(exc, RedisConnectionError) and (
        "connecting" in text or "No connection available" in text
    ):
        return RedisStorageError(message)
    return OutcomeUnknown(message)


def _refusal(exc: ResponseError) -> RedisRefusal:
    """redis-py's error reply as the auto-pipeline's (redis-py drops NOSCRIPT from the text)."""
    return RedisRefusal(f"NOSCRIPT {exc}" if isinstance(exc, NoScriptError) else str(exc))


def _is_noscript(reply: object) -> bool:
    """Redis does not know the script (restarted, failed over, or SCRIPT FLUSH)."""
    return isinstance(reply, RedisRefusal) and str(reply).startswith("NOSCRIPT")
