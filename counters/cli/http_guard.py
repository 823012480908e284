"""uvicorn's httptools protocol with two limits it lacks (a read deadline and a head size), and
refusals that keep the API's error contract and never cost an earlier request its answer.

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

Refusals at the HTTP level (a request that does not parse: 400 ``malformed_request``; a head
too long: 431 ``header_too_large``; a request that did not arrive whole in time: 408
``request_timeout``; an idle connection is closed with nothing said) answer JSON with ``detail``
and ``code``, as every other error, then close the connection. uvicorn wrote its text/plain 400
at once and closed: a request received whole before the bad bytes (pipelined, or a
Content-Length shorter than what was sent) was still applied, but its answer was lost (found by
an attacker: a debit charged, answered 400). Here, while such a request is being served, the
refusal waits behind its answer (and any request queued before the bad bytes): reading stops,
the answers go out in order, then the refusal, then the connection closes.

``counters serve`` passes this class as uvicorn's ``http`` with ``make_protocol``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# The refusals this protocol answers itself: status, detail, code.
MALFORMED = (400, "Invalid HTTP request received", "malformed_request")
HEAD_TOO_LARGE = (431, "Request header fields too large", "header_too_large")
TOO_SLOW = (408, "The request did not arrive whole in time", "request_timeout")
Refusal = tuple[int, str, str]


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
        self._refusal: bytes | None = None  # an answer waiting behind requests being served

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # the connection ends with the refusal: nothing after it is read
        if self._in_head:
            self._head_bytes += self._head_part(data)
            if self._head_bytes > self._max_head:
                self._refuse(HEAD_TOO_LARGE)
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that do not parse (``msg`` is its text): ours instead."""
        self._refuse(MALFORMED)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and not self._serving():
            self._send_refusal()

    def _serving(self) -> bool:
        """Whether a request received whole is still being served, or queued to be."""
        cycle = self.cycle
        return bool(self.pipeline) or (
            cycle is not None and not cycle.response_complete and not cycle.more_body
        )

    def _refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` and close the connection; after the answers of the requests
        received whole before it, if any are still being served (reading stops meanwhile)."""
        self._disarm()
        status, detail, code = refusal
        body = orjson.dumps({"detail": detail, "code": code})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self._refusal = b"".join(head) + body
        if self.pipeline and self.cycle is not None and self.cycle.more_body:
            self.pipeline.popleft()  # queued with its body cut short: it will never be whole
        if self._serving():
            self.flow.pause_reading()
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self._refusal = b""  # an answer is half sent: only closing is left
        self._send_refusal()

    def _send_refusal(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self._refusal or b"")
            self.transport.close()

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
        """The read deadline passed: 408 if part of a request came, else (an idle
        connection) close with nothing said."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        partial = self._head_bytes > 0 or (
            cycle is not None and cycle.more_body and not cycle.response_complete
        )
        if partial:
            self._refuse(TOO_SLOW)
        else:
            self.transport.close()


def make_protocol(read_timeout: float, max_head: int) -> Any:
    """The protocol class to pass as uvicorn's ``http`` (a picklable partial)."""
    return functools.partial(GuardedHttpToolsProtocol, read_timeout=read_timeout, max_head=max_head)
