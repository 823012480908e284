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
from typing import Any, NamedTuple

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
RULES_LIBRARY = "rules"  # compiled per rules version, not a file (counters/rules/compiled.py)
_KEPT_VERSIONS = 8  # rules versions whose scripts a process keeps (calls in flight over reloads)


def script_names() -> list[str]:
    """Every ``lua/*.lua`` file, without its suffix."""
    files = importlib.resources.files(lua.__name__).iterdir()
    return sorted(f.name[: -len(".lua")] for f in files if f.name.endswith(".lua"))


def _requires(text: str) -> list[str]:
    match = _REQUIRES.match(text.split("\n", 1)[0])
    return (
        [] if match is None else [lib.strip() for lib in match.group(1).split(",") if lib.strip()]
    )


def script_source(name: str, rules: str | None = None) -> str:
    """The text Redis runs for ``lua/<name>.lua``: the libraries it requires (and theirs, each
    once, dependencies first), then the script. The library ``rules`` is not a file: it is
    ``rules``, one rules version compiled to Lua (counters/rules/compiled.py); a script that
    requires it without one is a ``ValueError``."""
    lib_dir = importlib.resources.files(lua.__name__).joinpath("lib")
    included: dict[str, str] = {}

    def include(lib: str) -> None:
        if lib in included:
            return
        if lib == RULES_LIBRARY:
            if rules is None:
                raise ValueError(f"{name}.lua requires the compiled rules; none given")
            included[lib] = rules
            return
        text = lib_dir.joinpath(f"{lib}.lua").read_text("utf-8")
        for needed in _requires(text):
            include(needed)
        included[lib] = text

    text = lua.source(name)
    for lib in _requires(text):
        include(lib)
    return "\n".join([*included.values(), text])


def requires_rules(name: str) -> bool:
    """Whether ``lua/<name>.lua`` (or a library it requires) requires the compiled rules."""
    lib_dir = importlib.resources.files(lua.__name__).joinpath("lib")
    pending, seen = _requires(lua.source(name)), set()
    while pending:
        lib = pending.pop()
        if lib == RULES_LIBRARY:
            return True
        if lib not in seen:
            seen.add(lib)
            pending += _requires(lib_dir.joinpath(f"{lib}.lua").read_text("utf-8"))
    return False


class _Compiled(NamedTuple):
    """The scripts that require the rules, compiled with one rules version: texts and SHAs."""

    sources: dict[str, str]
    shas: dict[str, str]


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
        names = script_names()
        self._ruled = {name for name in names if requires_rules(name)}
        self._sources = {name: script_source(name) for name in names if name not in self._ruled}
        self._shas = {name: _sha(text) for name, text in self._sources.items()}
        self._compiled: dict[str, _Compiled] = {}  # by rules version, the newest last
        self._ruled_shas: dict[str, dict[str, str]] = {}  # the same SHAs, by version
        self._send: Callable[..., Awaitable[Any]]
        self._send_many: Callable[[Sequence[Sequence[Arg]]], Awaitable[list[Any]]]
        if pipeline is not None:
            self._send, self._send_many = pipeline.submit, pipeline.execute_many
        else:
            self._send, self._send_many = self._pool_send, self._pool_send_many

    def use_rules(self, version: str, library: str) -> None:
        """Compile every script that requires the rules with ``library``, the Lua of rules
        ``version`` (``counters.rules.compiled.lua_rules``); calls naming that version run
        them from now on. The last few versions are kept, so a call built before a reload is
        still sent with the rules it was built with. Synchronous: part of a reload's one step."""
        if version not in self._compiled:
            sources = {name: script_source(name, library) for name in sorted(self._ruled)}
            shas = {name: _sha(text) for name, text in sources.items()}
            self._compiled[version] = _Compiled(sources, shas)
        else:  # this version is the newest again
            self._compiled[version] = self._compiled.pop(version)
        while len(self._compiled) > _KEPT_VERSIONS:
            del self._compiled[next(iter(self._compiled))]
        self._ruled_shas = {version: compiled.shas for version, compiled in self._compiled.items()}

    def _for(self, call: Call) -> _Compiled:
        """The compiled scripts of the rules version ``call`` names (its ``rules`` field)."""
        version: str = getattr(call, "rules", "")
        compiled = self._compiled.get(version)
        if compiled is None:
            raise RedisStorageError(
                f"{call.SCRIPT}: no scripts compiled for rules version {version!r} "
                f"(this process has {', '.join(self._compiled) or 'none'})"
            )
        return compiled

    def sha(self, call: Call) -> str:
        """The SHA ``call`` is sent to: its script's, compiled with the rules it names when
        the script requires them (on the hot path: two dict lookups)."""
        sha = self._shas.get(call.SCRIPT)
        if sha is not None:
            return sha
        try:
            return self._ruled_shas[call.rules][call.SCRIPT]  # type: ignore[attr-defined]
        except (KeyError, AttributeError):
            return self._for(call).shas[call.SCRIPT]  # raises, naming the version

    def source(self, call: Call) -> str:
        """The text of the script ``call`` runs (what NOSCRIPT recovery loads)."""
        text = self._sources.get(call.SCRIPT)
        return text if text is not None else self._for(call).sources[call.SCRIPT]

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
        return ("EVALSHA", self.sha(call), len(key_values), *key_values,
                *_astuple(call))  # fmt: skip

    def send(self, command: tuple[Arg, ...]) -> Awaitable[Any]:
        """Send one ``command`` on the transport: with the auto-pipeline a bare future (the hot
        lane's one await per request). A refusal raises ``RedisRefusal``: hand it to
        ``refused``, which is what ``run`` does."""
        return self._send(*command)

    @property
    def send_packed(self) -> Callable[[bytes], Awaitable[Any]] | None:
        """Send a command already packed as RESP (``AutoPipeline.submit_packed``), when the
        transport is one ``AutoPipeline``; None on a cluster or the pool (which route or pack
        commands themselves): build the typed call and ``send`` it instead."""
        pipeline = self._pipeline
        return pipeline.submit_packed if isinstance(pipeline, AutoPipeline) else None

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
        commands = [("EVALSHA", self.sha(call), *command_args(keys, call)) for keys, call in calls]
        replies = await self._send_many(commands)
        return await self._recover([call for _, call in calls], commands, replies)

    async def _recover(
        self, calls: Sequence[Call], commands: Sequence[Sequence[Arg]], replies: list[Any]
    ) -> list[Any]:
        """The one NOSCRIPT recovery: load each script Redis did not know, send its calls again;
        every refusal left is named after its script."""
        missing = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
        if missing:
            for text in sorted({self.source(calls[i]) for i in missing}):
                await self._load(text)
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


def _sha(text: str) -> str:
    """The SHA-1 Redis names a script text by."""
    return hashlib.sha1(text.encode()).hexdigest()


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
