"""Auto-pipelining: the Redis commands a process issues in one event-loop tick go out as one write.

Under load many requests are in flight in one worker at once, each waiting on one script call.
Sent one by one through a connection pool, every call pays its own write, its own read wake-up
and redis-py's per-command Python. Here every call issued before the loop next runs is packed
(by hiredis, in C), queued, and written with the others in one ``write`` on one connection; the
replies come back in order, are parsed in C, and resolve the callers' futures in order. Redis runs
each command on its own as before: a pipeline is not a transaction, and each script stays atomic.

- A reply that is a Redis error fails only its own call (``RedisRefusal``), never its neighbours.
- A lost connection fails every call still waiting on it; the next call connects again. A call
  whose command was already written fails with ``OutcomeUnknown`` (Redis may have run it, or
  will once it resumes), one still queued in this tick with a plain ``StorageError`` (it was
  never sent): the API tells the two apart (503 ``outcome_unknown`` / ``storage_unavailable``).
- A caller that is cancelled simply never sees its reply; the order of the others is unchanged.
- Redis that does not answer within ``timeout`` (stopped, overloaded, a network black hole):
  when the oldest waiting command is older than ``timeout`` and no reply at all came for that
  long, the connection is cut, failing every call waiting on it (``StorageError``, a prompt 503
  at the API, never a hang); the next call connects again. Replies come in order, so the oldest
  waiting command is the only one to watch: one timer per connection, not one per command; and
  a long pipeline that Redis is working through (replies still arriving) is not a stall.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url

from counters.errors import OutcomeUnknown, RedisStorageError, StorageError
from counters.tasks import retrieve

Arg = str | int | float | bytes


# hiredis's stub types the command as a 1-tuple; it takes any number of arguments.
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class RedisRefusal(StorageError):
    """Redis answered one command with an error reply (the message is Redis's)."""


class _Protocol(asyncio.Protocol):
    """One connection: commands queued in this tick, and the futures awaiting replies in order,
    each with the monotonic time by which its reply is due."""

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.deadlines: deque[float] = deque()
        self.queued: list[bytes] = []
        self.reader = hiredis.Reader(encoding="utf-8")
        self.timeout = timeout
        self.watchdog: asyncio.Handle | None = None
        self.last_reply = 0.0  # monotonic time of the last bytes Redis sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        """Queue one packed command; the first of a tick schedules the write of them all.

        On a connection already lost (it can drop between connecting and this call) the future
        fails at once instead of waiting for a reply that cannot come."""
        if not self.usable:
            future.set_exception(
                RedisStorageError("Redis connection lost before the command was sent")
            )
            return
        if not self.queued:
            self.loop.call_soon(self.flush)
        self.queued.append(packed)
        self.waiting.append(future)
        self.deadlines.append(time.monotonic() + self.timeout)
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(self.timeout, self.check_deadline)

    def check_deadline(self) -> None:
        """Cut the connection if the oldest waiting command is past its deadline; otherwise
        look again when it will be."""
        self.watchdog = None
        if not self.deadlines:
            return
        late = max(self.deadlines[0], self.last_reply + self.timeout) - time.monotonic()
        if late > 0:
            self.watchdog = self.loop.call_later(late, self.check_deadline)
            return
        # Late, or only the loop was busy and the reply already waits in the socket: one more
        # loop iteration (which polls for I/O first) tells the two apart.
        self.watchdog = self.loop.call_soon(self.expire, self.waiting[0])

    def expire(self, oldest: asyncio.Future[Any]) -> None:
        """Cut the connection if ``oldest`` still waits and nothing came meanwhile."""
        self.watchdog = None
        stalled = time.monotonic() >= self.last_reply + self.timeout
        if self.waiting and self.waiting[0] is oldest and stalled:
            if self.transport is not None:
                self.transport.abort()  # connection_lost fails every waiting call
            self.fail_all(f"Redis did not answer within {self.timeout:g}s")
        else:
            self.check_deadline()  # progress: watch the (new) oldest command

    def flush(self) -> None:
        queued, self.queued = self.queued, []
        if self.transport is not None and queued:
            self.transport.write(b"".join(queued))

    def data_received(self, data: bytes) -> None:
        self.last_reply = time.monotonic()
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        deadlines = self.deadlines
        while (reply := reader.gets()) is not False:
            future = waiting.popleft()
            deadlines.popleft()
            if future.done():  # the caller was cancelled
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisRefusal(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(f"Redis connection lost: {exc or 'closed by the server'}")

    def fail_all(self, why: str) -> None:
        """Give up the connection: every call queued or waiting on it fails, saying ``why``.

        The waiting futures are in command order and the commands still queued (not yet
        written) are the last ``len(queued)`` of them: the written ones get ``OutcomeUnknown``,
        the others a ``RedisStorageError`` that says they were not sent."""
        written = len(self.waiting) - len(self.queued)
        self.transport = None
        self.queued = []
        self.deadlines.clear()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        unknown = OutcomeUnknown(f"{why} (the command was sent: it may have run)")
        unsent = RedisStorageError(f"{why} (the command was not sent)")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(unknown if written > 0 else unsent)
            written -= 1


class AutoPipeline:
    """One connection per process; calls made in one loop tick are written together.

    Like a redis-py pool, it belongs to the event loop it first connects on.
    """

    def __init__(self, url: str, timeout: float = 0.5) -> None:
        """``timeout`` (seconds) bounds every command's reply (connecting:
        ``connect_timeout``)."""
        options = parse_url(url)
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._ssl = url.startswith("rediss://")
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None

    def submit(self, *args: Arg) -> Awaitable[Any]:
        """Send one command with those queued in the same tick: await its reply (or
        ``RedisRefusal``). While connected this is a bare future, not a coroutine: the hot path
        pays for no extra coroutine frame."""
        return self.submit_packed(_pack(args))

    def submit_packed(self, packed: bytes) -> Awaitable[Any]:
        """As ``submit``, for a command already packed as RESP (``counters.redis.calls.bulk``):
        the hot lane's award and debit, whose constant arguments are packed once a day."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            return self._submit_packed_connected(packed)
        future: asyncio.Future[Any] = protocol.loop.create_future()
        protocol.send(packed, future)
        return future

    async def _submit_packed_connected(self, packed: bytes) -> Any:
        protocol = await self._connect()
        future: asyncio.Future[Any] = protocol.loop.create_future()
        protocol.send(packed, future)
        return await future

    async def execute(self, *args: Arg) -> Any:
        """As ``submit``, as a coroutine."""
        return await self.submit(*args)

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in the same write; each reply in order, a ``RedisRefusal`` in the
        place of each command Redis refused. A lost connection raises ``StorageError``."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._connect()
        futures: list[asyncio.Future[Any]] = []
        for command in commands:
            future = protocol.loop.create_future()
            protocol.send(_pack(tuple(command)), future)
            futures.append(future)
        replies: list[Any] = []
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except RedisRefusal as exc:
                    replies.append(exc)
        except BaseException:  # lost connection or cancelled: settle the rest quietly
            for future in futures:
                if not future.cancel() and not future.cancelled():
                    future.exception()
            raise
        return replies

    async def _connect(self) -> _Protocol:
        """The connection, opened once however many calls are waiting for it."""
        connecting = self._connecting
        if connecting is None or connecting.done():
            connecting = self._connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(retrieve)
        return await asyncio.shield(connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout(self._timeout)):
                make = lambda: _Protocol(self._timeout)  # noqa: E731
                if self._path:
                    _, protocol = await loop.create_unix_connection(make, str(self._path))
                else:
                    context = ssl.create_default_context() if self._ssl else None
                    _, protocol = await loop.create_connection(
                        make, self._host, self._port, ssl=context
                    )
                setup: list[tuple[Arg, ...]] = []
                if self._password is not None:
                    user = (self._username,) if self._username else ()
                    setup.append(("AUTH", *user, self._password))
                if self._db:
                    setup.append(("SELECT", self._db))
                futures = [loop.create_future() for _ in setup]
                for command, future in zip(setup, futures, strict=True):
                    protocol.send(_pack(command), future)
                await asyncio.gather(*futures)
        except (OSError, TimeoutError, StorageError) as exc:
            raise RedisStorageError(f"cannot connect to Redis: {exc}") from exc
        self._protocol = protocol
        return protocol

    async def aclose(self) -> None:
        """Close the connection; calls still waiting fail with ``StorageError``."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


def connect_timeout(timeout: float) -> float:
    """How long connecting to Redis may take for a command ``timeout``: at least 2 s. A
    connection is made once and reused; a burst of new ones (a start, a restart) on a busy
    machine measured over 0.5 s, while a stopped Redis still accepts (the kernel does) and is
    caught by the command's own timeout."""
    return max(timeout, 2.0)
