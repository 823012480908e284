"""A TCP proxy the test controls, to cut a server off the way networks fail.

``TcpProxy(port)`` listens on 127.0.0.1 (a free port) and forwards every connection to
127.0.0.1:``port``. Its mode changes at any time, from any thread:

- ``FORWARD``: bytes flow both ways.
- ``REFUSE``: the listening socket is closed (new connections get ECONNREFUSED) and every open
  connection is reset: Postgres or Redis "down".
- ``BLACKHOLE``: new connections are accepted and open ones stay open, but nothing is forwarded
  either way: a stalled server, a dropped route. Only timeouts notice.

It runs its own event loop in a daemon thread, so sync tests, async tests and subprocesses
(through ``proxy.port``) can all use it.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Coroutine
from typing import Any, Self

from counters.cli.embedded import free_port


class Mode(enum.Enum):
    FORWARD = "forward"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


class TcpProxy:
    """127.0.0.1:``self.port`` -> 127.0.0.1:``target_port``, in the mode the test sets."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.mode = Mode.FORWARD
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()  # set while FORWARD (used on the proxy's loop only)

    def start(self) -> Self:
        """Start the thread and listen."""
        self._thread.start()
        self._call(self._set(Mode.FORWARD))
        return self

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; returns once the proxy acts on it."""
        self._call(self._set(mode))

    def stop(self) -> None:
        """Close everything and end the thread."""
        self._call(self._set(Mode.REFUSE))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _set(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.FORWARD:
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode is Mode.REFUSE:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            links = list(self._links)
            for link in links:
                link.cancel()
            await asyncio.gather(*links, return_exceptions=True)
        elif self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # BLACKHOLE: accepted, never connected through
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(task)
            for side in (writer, upstream):
                if side is not None:
                    _reset(side)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65_536):
            await self._flowing.wait()  # BLACKHOLE holds the bytes: nothing goes through
            sink.write(data)
            await sink.drain()
        sink.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once, dropping whatever was not sent, as a dying host or firewall does."""
    writer.transport.abort()
