"""uvicorn's httptools protocol with two limits it lacks (a read deadline and a head size), and
refusals that keep the API's error contract and never cost an earlier request its answer.

uvicorn (0.54) arms no timer on a fresh connection and none while a request's head or body is
being received: a client that connects and sends nothing, or half a body, holds the connection
(and a worker's memory) for as long as it likes; and httptools buffers a header of any size
(``h11_max_incomplete_event_size`` applies to h11 only). Here:

- every request must arrive whole, head and body, within ``read_timeout`` seconds from the
  connection (the first request) or from its first byte (the next ones on a kept-alive
  connection; between requests uvicorn's keep-alive timeout applies), else the connection is
  closed (a request already being served then sees ``http.disconnect``); time while this
  side has stopped reading (behind a request being answered) does not count;
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

**The hot lane** (issue #15). uvicorn's ASGI machinery costs a request more CPU than all of
the service's own work on it: measured on one VM, a raw ASGI app under uvicorn 30 us of server
CPU a request, an httptools protocol answering the same bytes with a task a request 5-7 us
(bench/README.md). So the exact paths of the two hot routes (``POST /api/exp/gain`` and
``POST /api/v1/xp/debit``, from the app: ``CountersApp.lane``) are served by this protocol
itself: no ASGI scope, request cycle, ``receive``/``send`` messages or their checks; the
headers as parsed and the body, once whole, go to ``CountersApp.answer_lane`` (the same code the
ASGI path runs: ``HotRoute``'s checks, handler, errors, request id, metrics, access log), and
its answer leaves in one write. Anything that needs ASGI goes through it as before: another
path (a query string included), HTTP/1.0, ``Expect: 100-continue``, an upgrade, no
Content-Length or one over the body limit, a request pipelined behind one in flight (it queues
as uvicorn queues it), an app uvicorn wrapped in middleware. A test sends every kind of answer
through both and compares the bytes.

Two more costs of uvicorn's protocol are left out, on every request:

- an answer is one ``transport.write`` (one ``send`` system call) of head and body together
  where uvicorn wrote the head and then the body: the head waits for the first body message;
- no timer is created per request: uvicorn armed a keep-alive ``TimerHandle`` after every
  answer, and this guard a read-deadline one per request. Both deadlines are timestamps on the
  connection instead, checked by one ``_Sweeper`` per event loop every ``TICK`` seconds, so a
  deadline fires up to ``TICK`` late.

The request cycle and the two uvicorn methods that create one or arm the keep-alive timer are
uvicorn 0.54's (pinned in pyproject.toml), changed only as said above.

``counters serve`` passes this class as uvicorn's ``http`` with ``make_protocol``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import urllib.parse
import weakref
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

_log = logging.getLogger(__name__)
# How often a worker's connections are checked for a passed read or keep-alive deadline (s).
TICK = 0.25

# The refusals this protocol answers itself: status, detail, code.
MALFORMED = (400, "Invalid HTTP request received", "malformed_request")
HEAD_TOO_LARGE = (431, "Request header fields too large", "header_too_large")
TOO_SLOW = (408, "The request did not arrive whole in time", "request_timeout")
UNSUPPORTED_CODING = (
    501,
    "Transfer-Encoding other than chunked is not supported; send the body as is",
    "transfer_coding_not_supported",
)
Refusal = tuple[int, str, str]
_UNPARSED = (
    "Invalid HTTP request received."  # uvicorn's warning (and text) for bytes that do not parse
)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request refused by its head."""


def _framing_refusal(headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    """Why a request's ``Transfer-Encoding`` cannot be served, or None (none, or only
    ``chunked``, which httptools decodes). RFC 9112 section 6.1: a transfer coding the server
    does not understand gets 501; section 6.3: a body whose last coding is not chunked has no
    length the server can find, 400 and the connection closed. httptools read ``gzip,
    chunked`` as chunked and handed the compressed bytes on as the body."""
    codings: list[bytes] = []
    for name, value in headers:
        if name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
    if not codings or codings == [b"chunked"]:
        return None
    if codings[-1] != b"chunked":
        return MALFORMED
    return UNSUPPORTED_CODING


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a per-request read deadline and a request-head size limit."""

    # uvicorn's request cycle of the latest request, or a hot lane's (_LaneCycle: the
    # attributes uvicorn reads of a cycle, and no more)
    cycle: Any

    def __init__(self, *args: Any, read_timeout: float, max_head: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._max_head = max_head
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: its end may span two chunks
        self._in_head = True
        # loop.time() by which the request being read must be whole (0: none being read) and
        # by which an idle kept-alive connection must send its next one (0: not idle); checked
        # by the loop's _Sweeper
        self._read_by = 0.0
        self._idle_by = 0.0
        self._refusal: bytes | None = None  # an answer waiting behind requests being served
        self._refused_head: Refusal | None = None  # why on_headers_complete stopped the parser
        # The app's hot lane (api.asgi.CountersApp.lane and answer_lane), if it has one and
        # uvicorn did not wrap it in middleware of its own
        self._lane_of = getattr(self.app, "lane", None)
        self._answer_lane = getattr(self.app, "answer_lane", None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        _Sweeper.of(self.loop).watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._idle_by = 0.0
        _Sweeper.of(self.loop).forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # the connection ends with the refusal: nothing after it is read
        if self._in_head:
            self._head_bytes += self._head_part(data)
            if self._head_bytes > self._max_head:
                self._refuse(HEAD_TOO_LARGE)
                return
        # uvicorn 0.54's data_received, inline, but its warning "Invalid HTTP request
        # received." only for bytes that do not parse: a head refused on purpose (a transfer
        # coding, _framing_refusal) is a request answered, as a 4xx from the app is, and a
        # client sending them would otherwise write a misleading warning per request.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused_head is None:
                self.logger.warning(_UNPARSED)
            else:
                self.logger.debug("refused a request by its head: %d %s", *self._refused_head[::2])
            self.send_400_response(_UNPARSED)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that do not parse (``msg`` is its text): ours instead, or
        the refusal a parser callback raised ``_Refused`` for."""
        self._refuse(self._refused_head or MALFORMED)

    def on_message_begin(self) -> None:
        """uvicorn's, but the ASGI scope is built once the head shows the request is not the
        hot lane's (``on_headers_complete``)."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self._in_head = True
        # Not idle once a request begins (uvicorn cancelled its keep-alive timer on any bytes,
        # even the CRLFs the parser skips before a request: those kept a connection for ever)
        self._idle_by = 0.0
        if not self._read_by:
            self._arm()

    def on_header(self, name: bytes, value: bytes) -> None:
        """uvicorn's, for the head's fields only: a chunked body's trailer fields (parsed after
        ``on_headers_complete``) are dropped. uvicorn appended them to the request's headers,
        the ASGI scope's list, which the app reads once the body is whole: a trailer acted as
        a header the head never had (``Authorization``, ``X-User-Id``), past whatever checked
        the head. RFC 9110 section 6.5.1: a trailer field is not merged into the header
        section."""
        if self._in_head:  # then uvicorn 0.54's on_header, inline (a super() call per
            # header cost the hot lane ~0.12 us each)
            name = name.lower()
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The hot lane's request (``_lane_cycle``), else uvicorn's, with ``_Cycle`` for its
        request cycle; the head's end noted either way."""
        self._in_head = False
        self._head_bytes = 0
        self._head_tail = b""
        http_version = self.parser.get_http_version()
        method = self.parser.get_method()
        if self._lane_of is not None and http_version == "1.1":
            cycle = self._lane_cycle(method)  # None for any Transfer-Encoding
            if cycle is not None:
                self.cycle = cycle
                return
        refusal = _framing_refusal(self.headers)  # off the lane: its head had none to check
        if refusal is not None:  # stops the parser: uvicorn answers with send_400_response
            self._refused_head = refusal
            raise _Refused(refusal[1])
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        self.scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.scope["path"] = self.root_path + path
        self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        self.scope["query_string"] = parsed_url.query or b""
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        existing_cycle = self.cycle
        self.cycle = _Cycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:  # pipelined requests wait for the one being answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    def on_response_complete(self) -> None:
        """uvicorn's, with the keep-alive deadline a timestamp (no timer per answer), set only
        when no request is being read; then a refusal waiting behind the answers is sent once
        none is left to send."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif not self._read_by:  # else a request is being read: its read deadline applies
            self._idle_by = self.loop.time() + self.timeout_keep_alive
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
        head = self._status_and_defaults(status)
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self._refusal = b"".join(head) + body
        if self.pipeline and self.cycle is not None and self.cycle.more_body:
            # Queued with its body cut short: it will never be whole. It was queued behind a
            # request in flight (and maybe more queued whole), whose answers go first: the
            # latest request is the one queued before it, if any, and the refusal waits.
            self.pipeline.popleft()
            if self.pipeline:
                self.cycle = self.pipeline[0][0]
            self.flow.pause_reading()
            return
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

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _LaneCycle:  # bounded by its Content-Length (checked in the head)
            if not cycle.response_complete:
                cycle.chunks.append(body)  # joined once whole: no copy per chunk
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        cycle = self.cycle
        if type(cycle) is _LaneCycle:
            if not cycle.response_complete:
                cycle.more_body = False
                task = self.loop.create_task(self._serve_lane(cycle))
                task.add_done_callback(self.tasks.discard)
                self.tasks.add(task)
            return
        super().on_message_complete()
        if cycle is not None and cycle.response_complete and not self.transport.is_closing():
            # Answered before its body was read whole (a 413, a 404): the connection is idle
            # from now (the answer set no keep-alive deadline while the body was being read)
            self._idle_by = self.loop.time() + self.timeout_keep_alive

    def _lane_cycle(self, method: bytes) -> _LaneCycle | None:
        """The hot lane's cycle for this request if the app serves it there (``CountersApp.
        lane``) and nothing in it needs ASGI: no request in flight before it on this
        connection (pipelined ones queue behind it), no upgrade, no ``Expect: 100-continue``,
        a Content-Length within the app's limit and no Transfer-Encoding."""
        existing = self.cycle
        if existing is not None and not existing.response_complete:
            return None
        if self.expect_100_continue or self.parser.should_upgrade() or self.root_path:
            return None
        if self.limit_concurrency is not None:
            return None
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"transfer-encoding":
                return None
        if length is None:
            return None
        assert self._lane_of is not None
        route = self._lane_of(method, self.url, length)
        if route is None:
            return None
        return _LaneCycle(route, self.headers, self.parser.should_keep_alive())

    async def _serve_lane(self, cycle: _LaneCycle) -> None:
        """Answer a hot lane's request: the app's answer (``CountersApp.answer_lane``), its
        head and body in one write; then as uvicorn after an answer (keep-alive, the next
        pipelined request)."""
        assert self._answer_lane is not None  # set with _lane_of
        try:
            status, headers, payload = await self._answer_lane(
                cycle.route, cycle.headers, b"".join(cycle.chunks)
            )
            if self.flow.write_paused and not cycle.disconnected:
                await self.flow.drain()
        except BaseException as exc:  # as uvicorn's run_asgi: logged, a 500, the end
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            cycle.response_started = cycle.response_complete = True
            if not cycle.disconnected and not self.transport.is_closing():
                head = self._status_and_defaults(500)
                self.transport.write(b"".join(head) + _INTERNAL_ERROR)
                self.transport.close()
            if not isinstance(exc, Exception):
                raise
            return
        if cycle.disconnected:
            return  # nobody is left to answer
        head = self._status_and_defaults(status)
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", payload]
        cycle.response_started = cycle.response_complete = True
        self.transport.write(b"".join(head))
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _status_and_defaults(self, status: int) -> list[bytes]:
        """An answer's start as this protocol writes it itself: the status line, then
        uvicorn's default headers (date, server), each line's parts to join."""
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        return head

    def _arm(self) -> None:
        self._read_by = self.loop.time() + self._read_timeout

    def _disarm(self) -> None:
        self._read_by = 0.0

    def check_deadlines(self, now: float) -> None:
        """Act on a deadline passed by ``now`` (``loop.time()``): the read deadline's 408 or
        close, or the end of an idle kept-alive connection (uvicorn's keep-alive timeout).

        The read deadline does not run while this side has stopped reading (a request
        pipelined behind one being answered, or a body the app has not taken yet): the
        rest of the request may be waiting in the socket's buffer, sent in time. While paused
        it is kept ``read_timeout`` ahead, so it restarts when reading resumes (up to ``TICK``
        early): a slow answer ahead of a pipelined request sent whole and in time once cost it
        a 408."""
        if self._read_by and self.flow.read_paused and self._refusal is None:
            self._read_by = max(self._read_by, now + self._read_timeout)
        elif self._read_by and now >= self._read_by:
            self._too_slow()
        elif self._idle_by and now >= self._idle_by:
            self._idle_by = 0.0
            if not self.transport.is_closing():
                self.transport.close()

    def _too_slow(self) -> None:
        """The read deadline passed: 408 if part of a request came, else (an idle
        connection) close with nothing said."""
        self._read_by = 0.0
        if self.transport.is_closing():
            return
        cycle = self.cycle
        partial = self._head_bytes > 0 or (
            cycle is not None and cycle.more_body and not cycle.response_complete
        )
        # While a request is served, the deadline passed is that of a request begun behind it
        # (its head's first bytes uncounted when they came with the end of the head before)
        if partial or self._serving():
            self._refuse(TOO_SLOW)
        else:
            self.transport.close()


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, whose answer's head waits for its first body message and
    leaves with it in one ``transport.write``."""

    _head: bytes | None = None  # the head not yet written

    async def send(self, message: ASGISendEvent) -> None:
        """uvicorn 0.54's ``send``, changed only in when the head is written."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False
            status_code = message["status"]
            headers = self.default_headers + list(message.get("headers", []))
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )
            content = [STATUS_LINE[status_code]]
            has_connection_close = False
            for name, value in headers:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    connection = [token.lower().strip() for token in value.split(b",")]
                    if b"close" in connection:
                        self.keep_alive = False
                        has_connection_close = True
                content.extend([name, b": ", value, b"\r\n"])
            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")
            if (
                self.chunked_encoding is None
                and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)
            ):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            self._head = b"".join(content)  # written with the first body message
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
                out = b""
            elif self.chunked_encoding:
                out = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
                if not more_body:
                    out += b"0\r\n\r\n"
            else:
                num_bytes = len(body)
                if num_bytes > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= num_bytes
                out = body
            head = self._head
            if head is not None:
                self._head = None
                out = head + out
            if out:
                self.transport.write(out)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()
        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )


class _NoEvent:
    """A lane cycle's ``message_event``: uvicorn sets it when a body part comes or the
    connection is lost; the hot lane waits on nothing (its task starts with the body whole)."""

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()
# uvicorn's answer to an app that failed before answering (RequestResponseCycle), after the
# status line and default headers
_INTERNAL_ERROR = (
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n"
    b"\r\nInternal Server Error"
)


class _LaneCycle:
    """One hot lane request on a connection, where uvicorn keeps its request cycle
    (``protocol.cycle``): the attributes uvicorn and this guard read of a cycle, its route,
    head and body."""

    __slots__ = (
        "chunks",
        "disconnected",
        "headers",
        "keep_alive",
        "more_body",
        "response_complete",
        "response_started",
        "route",
    )  # fmt: skip
    message_event = _NO_EVENT

    def __init__(self, route: Any, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.route = route
        self.headers = headers
        self.chunks: list[bytes] = []  # the body's parts as they came (usually one)
        self.keep_alive = keep_alive
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False


class _Sweeper:
    """One event loop's guarded connections, whose deadlines it checks every ``TICK``
    seconds while any is open: one timer a worker where uvicorn and this guard armed one or
    two a request."""

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: set[GuardedHttpToolsProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Sweeper:
        """``loop``'s sweeper, made on first use."""
        sweeper = cls._of_loop.get(loop)
        if sweeper is None:
            sweeper = cls._of_loop[loop] = cls(loop)
        return sweeper

    def watch(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._watched.add(protocol)
        if self._timer is None:
            self._timer = self._loop.call_later(TICK, self._tick)

    def forget(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._watched.discard(protocol)

    def _tick(self) -> None:
        now = self._loop.time()
        for protocol in list(self._watched):
            try:
                protocol.check_deadlines(now)
            except Exception:  # one connection's fault never stops every deadline of the worker
                _log.exception("deadline check failed: connection aborted")
                self._watched.discard(protocol)
                protocol.transport.abort()
        self._timer = self._loop.call_later(TICK, self._tick) if self._watched else None


def make_protocol(read_timeout: float, max_head: int) -> Any:
    """The protocol class to pass as uvicorn's ``http`` (a picklable partial)."""
    return functools.partial(GuardedHttpToolsProtocol, read_timeout=read_timeout, max_head=max_head)
