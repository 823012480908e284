"""Redis Cluster (issue #12): the seed-node URL, and a router of auto-pipelines, one per node.

``COUNTERS_REDIS_URL=redis+cluster://[user:password@]host:port[,host:port...]`` names a cluster by
some of its nodes (seeds); ``redis://`` and ``rediss://`` stay single-node. ``rediss+cluster://``
is the same over TLS.

``ClusterPipeline`` has the call interface of the single-node ``AutoPipeline``
(counters/redis/pipelining.py): ``submit``, ``execute``, ``execute_many``, ``aclose``. Each call
goes to the master owning the hash slot of its first key (every key of a script carries one hash
tag ``{bN}``, counters/redis/keys.py), through that node's own ``AutoPipeline``: one write per node
per event-loop tick. Redis Cluster's redirections are followed (the Redis Cluster specification,
"Redirection and resharding"):

- ``MOVED slot host:port``: the slot has a new owner; the slot map is refreshed from the cluster
  and the call sent again to the named node. A command refused with a redirection did not run,
  so sending it again applies it at most once.
- ``ASK slot host:port``: the slot is being migrated and this key is already on the target; the
  call is sent there once, preceded by ``ASKING`` in the same write (same connection, in order).
- ``TRYAGAIN`` (a multi-key script whose keys are split by a migration in progress) and
  ``CLUSTERDOWN``: sent again after a short pause, within the node's timeout.

A node that fails or stalls fails only the calls routed to it (``StorageError``, a prompt 503 +
Retry-After at the API): its auto-pipeline's own timeout (COUNTERS_REDIS_TIMEOUT_SECONDS) applies
to it alone, and a failure schedules a refresh of the slot map, so that once a replica is promoted
the next calls go to it. ``SCRIPT LOAD`` and ``FUNCTION LOAD`` go to every master: NOSCRIPT and
"Function not found" are per node, and counters/redis/scripts.py recovers from them as on one
Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from redis.crc import key_slot

from counters.errors import ConfigError, RedisStorageError, StorageError
from counters.ids import is_digits
from counters.redis.pipelining import Arg, AutoPipeline, RedisRefusal
from counters.tasks import retrieve

SCHEMES = ("redis+cluster", "rediss+cluster")
SLOTS = 16_384
_MAX_REDIRECTS = 8  # a slot moved more often than this during one call: give up (StorageError)
_RETRY_PAUSE = 0.02  # seconds between TRYAGAIN/CLUSTERDOWN attempts
_REFRESH_MIN_INTERVAL = 0.2  # seconds: failures of many calls at once refresh the map once


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """A cluster named by seed nodes: ``seeds`` as (host, port), credentials for every node."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def node_url(self, host: str, port: int) -> str:
        """The single-node URL of one node (same credentials), for its ``AutoPipeline``."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return f"{scheme}://{auth}{host}:{port}/0"

    def url(self) -> str:
        """Back to ``redis+cluster://...`` (what ``parse_cluster_url`` reads)."""
        scheme = SCHEMES[1] if self.tls else SCHEMES[0]
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return f"{scheme}://{auth}{','.join(f'{h}:{p}' for h, p in self.seeds)}"


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in SCHEMES


def parse_cluster_url(url: str) -> ClusterAddress:
    """Read ``redis+cluster://[user:password@]host:port[,host:port...]``.

    Raises ``ConfigError`` naming COUNTERS_REDIS_URL for another scheme, no seed, a seed without
    a valid port, or a database number (a cluster has only database 0)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ConfigError(f"COUNTERS_REDIS_URL: not a cluster URL (redis+cluster://...): {url!r}")
    auth, _, hosts = rest.rpartition("@")
    hosts, _, path = hosts.partition("/")
    if path.strip("0"):
        raise ConfigError("COUNTERS_REDIS_URL: a Redis Cluster has only database 0")
    seeds: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        host, _, port = part.rpartition(":")
        if not host or not is_digits(port) or not 0 < int(port) < 65_536:
            raise ConfigError(f"COUNTERS_REDIS_URL: seed {part!r} is not host:port")
        seeds.append((host.strip("[]"), int(port)))
    if not seeds:
        raise ConfigError("COUNTERS_REDIS_URL: a cluster URL names at least one host:port")
    username = password = None
    if auth:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else unquote(user)
        if not colon:
            username = None
    return ClusterAddress(tuple(seeds), username, password, scheme.lower() == SCHEMES[1])


def first_key(args: Sequence[Arg]) -> str | bytes | None:
    """The key a command is routed by: EVAL/EVALSHA's first key, else the first argument."""
    name = str(args[0]).upper()
    if name in ("EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"):
        return None if int(args[2]) == 0 else _as_key(args[3])
    if len(args) < 2:
        return None
    return _as_key(args[1])


def _as_key(value: Arg) -> str | bytes:
    return value if isinstance(value, str | bytes) else str(value)


def slot_of(key: str | bytes) -> int:
    """The hash slot of ``key`` (CRC16 of its hash tag, the Redis Cluster specification)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


class ClusterPipeline:
    """Auto-pipelining on a Redis Cluster: one ``AutoPipeline`` per master, calls routed by slot.

    Same interface as ``AutoPipeline``; belongs to the event loop it first connects on."""

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        """``url``: ``redis+cluster://...`` (``parse_cluster_url``); ``timeout`` (seconds) bounds
        each command's reply on each node, as on one Redis."""
        self._address = parse_cluster_url(url)
        self._timeout = timeout
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._nodes: dict[tuple[str, int], AutoPipeline] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    # -- the calls --------------------------------------------------------------------------

    def submit(self, *args: Arg) -> Awaitable[Any]:
        """Send one command to the master of its first key's slot (see the module's text)."""
        if str(args[0]).upper() in ("SCRIPT", "FUNCTION"):
            return self._on_every_master(args)
        return self._call(args)

    async def execute(self, *args: Arg) -> Any:
        """As ``submit``, as a coroutine."""
        return await self.submit(*args)

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands, each routed on its own (those for one node go in one write); each
        reply in order, a ``RedisRefusal`` in the place of each refused command. A node that
        fails raises ``StorageError`` for the whole call, as one lost connection does."""
        results = await asyncio.gather(
            *(self._call(tuple(command)) for command in commands), return_exceptions=True
        )
        replies: list[Any] = []
        for result in results:
            if isinstance(result, RedisRefusal):
                replies.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                replies.append(result)
        return replies

    async def _call(self, args: tuple[Arg, ...]) -> Any:
        key = first_key(args)
        slot = slot_of(key) if key is not None else 0
        node = self._slots[slot] or await self._node_of(slot)
        asking = False
        deadline = time.monotonic() + self._timeout
        for _ in range(_MAX_REDIRECTS):
            pipeline = self._pipeline(node)
            try:
                if asking:
                    reply = (await pipeline.execute_many([("ASKING",), args]))[1]
                    if isinstance(reply, RedisRefusal):
                        raise reply
                    return reply
                return await pipeline.submit(*args)
            except RedisRefusal as refusal:
                text = str(refusal)
                word = text.split(" ", 1)[0]
                if word == "MOVED":
                    node = _address_in(text)
                    self._slots[slot] = node
                    self._refresh_soon()
                    asking = False
                elif word == "ASK":
                    node, asking = _address_in(text), True
                elif word in ("TRYAGAIN", "CLUSTERDOWN") and time.monotonic() < deadline:
                    await asyncio.sleep(_RETRY_PAUSE)
                    if word == "CLUSTERDOWN":
                        await self._refresh()
                        node = self._slots[slot] or node
                else:
                    raise
            except StorageError:
                self._refresh_soon()  # a dead master: its replica may be promoted meanwhile
                raise
        raise RedisStorageError(f"Redis Cluster: slot {slot} kept moving; try again")

    async def _on_every_master(self, args: tuple[Arg, ...]) -> Any:
        """``SCRIPT LOAD``, ``FUNCTION LOAD`` and the like: every master runs it; the first
        reply is returned."""
        if not self._nodes:
            await self._refresh()
        masters = sorted({node for node in self._slots if node is not None})
        replies = await asyncio.gather(*(self._pipeline(node).submit(*args) for node in masters))
        return replies[0]

    # -- the slot map -----------------------------------------------------------------------

    def _pipeline(self, node: tuple[str, int]) -> AutoPipeline:
        pipeline = self._nodes.get(node)
        if pipeline is None:
            pipeline = AutoPipeline(self._address.node_url(*node), self._timeout)
            self._nodes[node] = pipeline
        return pipeline

    async def _node_of(self, slot: int) -> tuple[str, int]:
        """The master of ``slot``, once the slot map is read (one read for every call that
        arrives before the first map: they wait for the same one)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(retrieve)
        await asyncio.shield(self._refreshing)
        node = self._slots[slot]
        if node is None:
            raise RedisStorageError(f"Redis Cluster: no node serves slot {slot}")
        return node

    def masters(self) -> list[tuple[str, int]]:
        """The masters of the last slot map read, as (host, port)."""
        return sorted({node for node in self._slots if node is not None})

    def _refresh_soon(self) -> None:
        """Refresh the slot map in the background (at most every 0.2 s)."""
        if time.monotonic() - self._refreshed_at < _REFRESH_MIN_INTERVAL:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
            self._refreshing.add_done_callback(retrieve)

    async def _refresh(self) -> None:
        """Read the slot map (CLUSTER SLOTS) from the first node that answers: known masters
        first, then the seeds. ``StorageError`` when none does."""
        self._refreshed_at = time.monotonic()
        candidates = [*self.masters(), *self._address.seeds]
        errors: list[str] = []
        for node in dict.fromkeys(candidates):
            try:
                reply = await self._pipeline(node).execute("CLUSTER", "SLOTS")
            except StorageError as exc:
                errors.append(f"{node[0]}:{node[1]}: {exc}")
                continue
            slots: list[tuple[str, int] | None] = [None] * SLOTS
            for start, end, master, *_replicas in reply:
                owner = (str(master[0]) or node[0], int(master[1]))
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = owner
            self._slots = slots
            return
        raise RedisStorageError(f"Redis Cluster: no node answered ({'; '.join(errors)})")

    async def aclose(self) -> None:
        """Close every node's connection; calls still waiting fail with ``StorageError``."""
        nodes, self._nodes = self._nodes, {}
        for pipeline in nodes.values():
            await pipeline.aclose()


def _address_in(redirect: str) -> tuple[str, int]:
    """The node of a ``MOVED``/``ASK`` error: ``MOVED 3999 127.0.0.1:6381``."""
    host, _, port = redirect.split()[2].rpartition(":")
    return host, int(port)
