"""uvicorn's httptools protocol with two limits it lacks: a read deadline and a head size.

uvicorn (0.54) arms no timer on a fresh connection and none while a request's head or body is
being received: a client that connects and sends nothing, or half a body, holds the connection
(and a worker's memory) for as long as it likes; and httptools buffers a header of any size
(``h11_max_incomplete_event_size`` applies to h11 only). Here:

- every request must arrive whole, head and body, within ``read_timeout`` seconds from the
  connection (the first request) or from its first byte (the next ones on a kept-alive
  connection; between requests uvicorn's keep-alive timeout applies), else the connection is
  closed (a request already being served then sees ``http.disconnect``);
- a request head (request line and headers, never the body) longer than ``max_head`` bytes is
  answered 431 and the connection closed.

``counters serve`` passes this class as uvicorn's ``http`` with ``make_protocol``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_431_BODY = b'{"detail":"Request header fields too large"}'
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_431_BODY), _431_BODY)
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a per-request read deadline and a request-head size limit."""

    def __init__(self, *args: Any, read_timeout: float, max_head: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._max_head = max_head
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: its end may span two chunks
        self._in_head = True
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += self._head_part(data)
            if self._head_bytes > self._max_head:
                self._disarm()
                self.transport.write(_431)
                self.transport.close()
                return
        super().data_received(data)

    def _head_part(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the request head: up to and including the blank
        line that ends it (looked for across the chunk boundary), else all of them. A body sent
        in the same write as its head is the app's to limit (COUNTERS_MAX_BODY_BYTES, 413), not
        this guard's. A pipelined request's head that starts later in the same chunk is bounded
        by the chunk (the transport reads at most 256 KiB at a time)."""
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            return len(data)
        self._head_tail = b""
        return max(end + 4 - (len(seen) - len(data)), 0)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._head_tail = b""
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        super().on_message_complete()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self._read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def make_protocol(read_timeout: float, max_head: int) -> Any:
    """The protocol class to pass as uvicorn's ``http`` (a picklable partial)."""
    return functools.partial(GuardedHttpToolsProtocol, read_timeout=read_timeout, max_head=max_head)
