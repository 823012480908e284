"""The guarded uvicorn protocol ``counters serve`` runs, in-process with the real app: the head
limit counts head bytes only (a body in the same write is the app's to limit), and uvicorn's own
access log stays off (the app writes its own, COUNTERS_ACCESS_LOG)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import io
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.errors import ERROR_CODES
from counters import logs
from counters.cli.embedded import free_port
from counters.cli.http_guard import (
    HEAD_TOO_LARGE,
    MALFORMED,
    TOO_SLOW,
    UNSUPPORTED_CODING,
    make_protocol,
)
from counters.clock import ManualClock
from counters.errors import BacklogFull
from counters.settings import Settings
from tests.support.core import SERVICE_KEY, service_headers

pytestmark = pytest.mark.anyio

MAX_BODY = 65_536  # COUNTERS_MAX_BODY_BYTES' default
MAX_HEAD = 4_096


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """A buffer that ``serving`` points the service's logging (JSON) at."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    for added in list(root.handlers):
        root.removeHandler(added)
    for old in saved[0]:
        root.addHandler(old)
    root.setLevel(saved[1])


@asynccontextmanager
async def serving(
    settings: Settings,
    log: io.StringIO | None = None,
    *,
    read_timeout: float = 5.0,
    app: object | None = None,
) -> AsyncIterator[int]:
    """The app (``app``, else one made from ``settings``) behind uvicorn with the guarded
    protocol, configured as ``counters serve`` does; with ``log``, the logging too, in the order
    of a worker: uvicorn's Config, then ours."""
    port = free_port()
    config = uvicorn.Config(
        app or create_app(settings), host="127.0.0.1", port=port, loop="asyncio",
        http=make_protocol(read_timeout, MAX_HEAD), access_log=False, log_config=None,
        proxy_headers=False,
    )  # fmt: skip
    if log is not None:
        logs.configure("info", "json")
        handler = logging.getLogger().handlers[-1]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(log)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST, head and body in one write (http.client joins a bytes body to the head)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def padded(size: int) -> bytes:
    """A valid gain body of exactly ``size`` bytes (JSON whitespace as padding)."""
    body = json.dumps({"action": "daily_chat"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def test_a_body_in_the_same_write_is_not_counted_as_head(settings: Settings) -> None:
    headers = service_headers("guard-1") | {"Content-Type": "application/json"}
    async with serving(settings) as port:
        at_limit = await asyncio.to_thread(post, port, "/api/exp/gain", padded(MAX_BODY), headers)
        over = await asyncio.to_thread(post, port, "/api/exp/gain", padded(MAX_BODY + 1), headers)
        big_head = headers | {"X-Big": "a" * MAX_HEAD}
        too_long = await asyncio.to_thread(post, port, "/api/exp/gain", b"{}", big_head)
    assert at_limit[0] == 200, at_limit
    assert over[0] == 413, over
    assert too_long[0] == 431, too_long
    assert json.loads(too_long[1])["code"] == "header_too_large"


async def test_uvicorn_writes_no_access_line_of_its_own(
    settings: Settings, log_lines: io.StringIO
) -> None:
    for access_log in (False, True):
        served = dataclasses.replace(settings, access_log=access_log)
        async with serving(served, log_lines) as port:
            for _ in range(3):
                await asyncio.to_thread(post, port, "/api/exp/gain", b"{}", service_headers("g2"))
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    assert len([line for line in lines if line["logger"] == "counters.access"]) == 3


def exchange(port: int, raw: bytes, *, pause: float = 0.0, rest: bytes = b"") -> list[bytes]:
    """Send ``raw`` (then, after ``pause`` seconds, ``rest``) on one connection and read until
    the server closes it: every answer it gave, split into responses (head and body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        if rest:
            time.sleep(pause)
            sock.sendall(rest)
        got = b""
        while chunk := sock.recv(65_536):
            got += chunk
    answers = []
    while got:
        head, _, got = got.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )  # fmt: skip
        answers.append(head + b"\r\n\r\n" + got[:length])
        got = got[length:]
    return answers


def one_by_one(port: int, requests: list[bytes]) -> list[bytes]:
    """Send ``requests`` on one connection, each once the answer before it came whole."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        got = b""
        for raw in requests:
            sock.sendall(raw)
            while b"\r\n\r\n" not in got:
                got += sock.recv(65_536)
            head, _, got = got.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(got) < length:
                got += sock.recv(65_536)
            answers.append(head + b"\r\n\r\n" + got[:length])
            got = got[length:]
    return answers


def gain_request(
    user_id: str,
    body: bytes,
    *,
    length: int | None = None,
    path: bytes = b"/api/exp/gain",
    extra: bytes = b"",
) -> bytes:
    """A gain as a service sends it for ``user_id``, ``extra`` header lines in its head."""
    head = "".join(f"{k}: {v}\r\n" for k, v in service_headers(user_id).items())
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + head.encode()
        + extra
        + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length)
        + body
    )


def status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


async def test_a_request_received_whole_keeps_its_answer_when_bad_bytes_follow(
    settings: Settings,
) -> None:
    """Found by an attacker: a gain whose Content-Length was shorter than what was sent was
    applied, and its only answer was uvicorn's text/plain 400. Now its 200 comes first, then a
    JSON 400 for the bytes that do not parse; a pipelined request before them is answered too."""
    body = b'{"action": "daily_chat"}'
    async with serving(settings) as port:
        trailing = await asyncio.to_thread(
            exchange, port, gain_request("guard-t1", body) + b"  \r\n"
        )
        pipelined = await asyncio.to_thread(
            exchange,
            port,
            gain_request("guard-t2", body) + gain_request("guard-t3", body) + b"GARBAGE\r\n\r\n",
        )
        alone = await asyncio.to_thread(exchange, port, b"GARBAGE\r\n\r\n")
    assert [status_and_body(a)[0] for a in trailing] == [200, 400], trailing
    assert status_and_body(trailing[0])[1]["awarded_to"] == "guard-t1"
    assert [status_and_body(a)[0] for a in pipelined] == [200, 200, 400], pipelined
    assert [status_and_body(a)[1]["awarded_to"] for a in pipelined[:2]] == ["guard-t2", "guard-t3"]
    assert [status_and_body(a) for a in alone] == [
        (400, {"detail": "Invalid HTTP request received", "code": "malformed_request"})
    ]


async def test_a_request_cut_short_is_answered_408_and_an_idle_connection_closed(
    settings: Settings,
) -> None:
    """A request that does not arrive whole within the read deadline gets a JSON 408 (nothing
    applied); a connection that sends nothing is closed with nothing said."""
    async with serving(settings, read_timeout=0.5) as port:
        cut = await asyncio.to_thread(
            exchange, port, gain_request("guard-s1", b'{"action"', length=24)
        )
        half_head = await asyncio.to_thread(exchange, port, b"POST /api/exp/gain HTTP/1.1\r\n")
        idle = await asyncio.to_thread(exchange, port, b"")
        after = await asyncio.to_thread(
            post, port, "/api/exp/gain", b'{"action": "daily_chat"}', service_headers("guard-s1")
        )
    expected = (
        408,
        {"detail": "The request did not arrive whole in time", "code": "request_timeout"},
    )
    assert [status_and_body(a) for a in cut] == [expected]
    assert [status_and_body(a) for a in half_head] == [expected]
    assert idle == []
    assert after[0] == 200 and json.loads(after[1])["exp_added"] > 0  # the cut one was not applied


async def test_the_read_deadline_waits_while_reading_waits_behind_a_slow_answer() -> None:
    """A request pipelined behind a slow one: its head came with the first, the rest of its
    body just after (in time), but reading stops while the request ahead is answered, so that
    rest waits in the socket. The read deadline ran meanwhile and answered it 408 (sessions
    11-14's notes); it now runs only while this side reads."""
    answer_after = 1.2  # seconds the first request takes: over twice the read deadline

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if scope["path"] == "/slow":
            await asyncio.sleep(answer_after)
        payload = json.dumps({"path": scope["path"], "bytes": len(body)}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    body = b'{"action": "daily_chat"}'
    slow = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    behind = (
        b"POST /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
        % (len(body))
    )

    def send_in_three(port: int) -> list[bytes]:
        """The slow request; once its app has its body, the next one's head and a part of
        its body; at once the rest (reading has stopped by then: it waits in the socket)."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for part in (slow, behind + body[:5], body[5:]):
                sock.sendall(part)
                time.sleep(0.1)
            got = b""
            while chunk := sock.recv(65_536):
                got += chunk
        return [b"HTTP/1.1" + answer for answer in got.split(b"HTTP/1.1")[1:]]

    async with serving(Settings(), read_timeout=0.5, app=app) as port:
        answers = await asyncio.to_thread(send_in_three, port)
    assert [status_and_body(a) for a in answers] == [
        (200, {"path": "/slow", "bytes": len(body)}),
        (200, {"path": "/next", "bytes": len(body)}),
    ]


@pytest.mark.parametrize(
    "refusal", [MALFORMED, HEAD_TOO_LARGE, TOO_SLOW, UNSUPPORTED_CODING], ids=lambda r: r[2]
)
def test_guard_refusals_are_documented_codes(refusal: tuple[int, str, str]) -> None:
    """Every refusal the guarded protocol answers itself uses a code of the API's catalogue
    (``api.errors.ERROR_CODES``, published in the OpenAPI schema), whose description names the
    same status: the two lists can never drift apart."""
    status, _, code = refusal
    assert code in ERROR_CODES
    assert f"({status}" in ERROR_CODES[code]


class RecordingTransport(asyncio.Transport):
    """An in-memory transport that keeps every ``write`` apart (uvicorn's own protocol tests
    use one the same way): what one answer costs in writes, which a socket cannot show."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 9000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def fixed(scope: Scope, receive: Receive, send: Send) -> None:
    """A body with its Content-Length (as every route of the API answers)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def streamed(scope: Scope, receive: Receive, send: Send) -> None:
    """Three chunks, no Content-Length: chunked transfer encoding."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for chunk in (b"one", b"", b"three"):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def empty(scope: Scope, receive: Receive, send: Send) -> None:
    """A 204: no body at all."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def served_by(protocol_class: object, app: object, raw: bytes) -> RecordingTransport:
    """``raw`` fed to a fresh ``protocol_class`` connection serving ``app``; its writes once
    every answer is complete (or after 5 s)."""
    from uvicorn.server import ServerState

    config = uvicorn.Config(
        app, proxy_headers=False, server_header=False, date_header=False, access_log=False
    )  # type: ignore[arg-type]
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})  # type: ignore[operator]
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(raw)
    expected = raw.count(b" HTTP/1.")
    for _ in range(500):
        if state.total_requests >= expected or transport.closed:
            break
        await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    return transport


REQUESTS = {
    "get": b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
    "head": b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
    "http10": b"GET /x HTTP/1.0\r\nHost: t\r\n\r\n",
}


@pytest.mark.parametrize("app", [fixed, streamed, empty], ids=lambda a: a.__name__)
@pytest.mark.parametrize("request_name", list(REQUESTS))
async def test_answers_are_uvicorns_bytes_in_fewer_writes(app: object, request_name: str) -> None:
    """Issue #15: the guarded protocol sends the bytes uvicorn's own protocol sends, for every
    kind of answer (a sized body, a chunked stream, a 204; to GET, HEAD, pipelined and HTTP/1.0
    requests), and a sized answer's head and body leave in one write where uvicorn made two."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    raw = REQUESTS[request_name]
    ours = await served_by(make_protocol(5.0, MAX_HEAD), app, raw)
    stock = await served_by(HttpToolsProtocol, app, raw)
    assert b"".join(ours.writes) == b"".join(stock.writes)
    assert ours.closed == stock.closed
    answers = raw.count(b" HTTP/1.")
    sent = [write for write in stock.writes if write]  # uvicorn writes b"" for no body
    assert all(ours.writes)
    if request_name == "head" or app is empty:  # a head alone: one write either way
        assert len(ours.writes) == len(sent) == answers
    elif app is fixed:
        assert len(ours.writes) == answers  # one write an answer
        assert len(sent) == 2 * answers
    else:  # the head leaves with the first chunk
        assert len(ours.writes) == len(sent) - answers


async def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_seconds(
    settings: Settings,
) -> None:
    """uvicorn's keep-alive timeout, kept without a timer per answer: a connection idle after
    its answer is closed once ``timeout_keep_alive`` (1 s here) has passed, within a TICK."""
    from counters.cli.http_guard import TICK

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, loop="asyncio",
        http=make_protocol(5.0, MAX_HEAD), access_log=False, log_config=None, timeout_keep_alive=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)

    def idle_for() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(65_536)
            answered = time.monotonic()
            while sock.recv(65_536):
                pass  # until the server closes
            return answer, time.monotonic() - answered

    try:
        answer, idle = await asyncio.to_thread(idle_for)
    finally:
        server.should_exit = True
        await task
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert 1.0 - TICK <= idle <= 1.0 + 2 * TICK + 0.5, idle


def lane_requests(user: str, path: bytes) -> list[bytes]:
    """One of each kind of answer the hot routes give, for ``user``, to ``path``."""
    key = f"Authorization: Bearer {SERVICE_KEY}\r\nX-User-Id: {user}\r\n".encode()

    def request(body: bytes, extra: bytes = b"", auth: bytes = key, debit: bool = False) -> bytes:
        to = path.replace(b"/api/exp/gain", b"/api/v1/xp/debit") if debit else path
        return (
            b"POST " + to + b" HTTP/1.1\r\nHost: x\r\nX-Request-Id: fixed-id\r\n" + auth + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )  # fmt: skip

    daily = b'{"action": "daily_chat"}'
    return [
        request(daily, b"Content-Type: application/json\r\n"),  # 200
        request(daily),  # 429: daily limit, with Retry-After
        request(b'{"action": "create_scene"}', b"Idempotency-Key: k1\r\n"),  # 200
        request(b'{"action": "create_scene"}', b"Idempotency-Key: k1\r\n"),  # its replay
        request(b'{"action": "create_persona"}', b"Idempotency-Key: k1\r\n"),  # key reused: 422
        request(b'{"action": "nope"}'),  # 422 unknown action
        request(b'{"action": '),  # 400 malformed JSON
        request(daily, b"Content-Type: text/plain\r\n"),  # 415
        request(daily, b"X-User-Id: other\r\n"),  # 400 repeated header
        request(daily, auth=b"Authorization: Bearer wrong\r\n"),  # 401
        request(b'{"generation_type": "EDIT_IMAGE"}', debit=True),  # no tier allows it: 4xx
        request(b'{"generation_type": 7}', debit=True),  # 422
        request(b'{"action": "create_character"}', b"Connection: close\r\n"),  # then closed
    ]


async def test_the_hot_lane_answers_byte_for_byte_as_asgi(
    settings: Settings, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #15: the protocol serves a hot route's exact path itself (``CountersApp.lane``),
    without ASGI; the same requests through ASGI (the path with a query string, which the
    lane leaves to uvicorn) get the same bytes, every kind of answer, in order, pipelined on one
    connection (only the date header and the user's own id differ)."""
    from counters.cli.http_guard import GuardedHttpToolsProtocol

    served = {"lane": 0}
    serve_lane = GuardedHttpToolsProtocol._serve_lane

    async def counted(self: GuardedHttpToolsProtocol, cycle: Any) -> None:
        served["lane"] += 1
        await serve_lane(self, cycle)

    monkeypatch.setattr(GuardedHttpToolsProtocol, "_serve_lane", counted)
    # A clock that stands still: a 429's Retry-After counts to midnight, and on the system
    # clock the two halves could fall either side of a second (once in a full run)
    async with serving(settings, app=create_app(settings, clock=clock)) as port:
        lane = await asyncio.to_thread(
            one_by_one, port, lane_requests("lane-user", b"/api/exp/gain")
        )
        lane_count = served["lane"]
        asgi = await asyncio.to_thread(
            one_by_one, port, lane_requests("asgi-user", b"/api/exp/gain?via=asgi")
        )
        # Pipelined: the first takes the lane, those sent behind it queue for ASGI, in order
        pipelined = await asyncio.to_thread(
            exchange, port, b"".join(lane_requests("pipe-user", b"/api/exp/gain"))
        )
    assert lane_count == len(lane) == 13
    assert served["lane"] == lane_count + 1  # none of the ASGI path's, one pipelined

    def comparable(answer: bytes) -> bytes:
        lines = [line for line in answer.split(b"\r\n") if not line.startswith(b"date: ")]
        for user in (b"lane-user", b"asgi-user", b"pipe-user"):
            lines = [line.replace(user, b"USER") for line in lines]
        return b"\r\n".join(lines)

    assert [comparable(a) for a in lane] == [comparable(a) for a in asgi]
    assert [comparable(a) for a in pipelined] == [comparable(a) for a in asgi]
    statuses = [int(a.split(b" ")[1]) for a in lane]
    assert statuses == [200, 429, 200, 200, 422, 422, 400, 415, 400, 401, 403, 422, 200], statuses
    assert b"x-request-id: fixed-id" in lane[0] and b"retry-after: " in lane[1]
    assert b"idempotent-replayed: true" in lane[3].lower()


async def test_a_fault_outside_the_handler_is_a_500_and_the_end_of_the_connection(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug past the handler's own error replies (here the request timer) on the hot lane:
    logged, answered as uvicorn answers an app that raised (a text 500, the connection closed),
    never a hang; the next connection is served."""
    from api.asgi import CountersApp

    def broken(*args: object) -> None:
        raise RuntimeError("timer broke")

    body = b'{"action": "daily_chat"}'
    async with serving(settings) as port:
        monkeypatch.setattr(CountersApp, "_answered", broken)
        failed = await asyncio.to_thread(exchange, port, gain_request("guard-f1", body))
        monkeypatch.undo()
        after = await asyncio.to_thread(
            post, port, "/api/exp/gain", body, service_headers("guard-f2")
        )
    assert len(failed) == 1 and failed[0].startswith(b"HTTP/1.1 500 ")
    assert failed[0].endswith(b"connection: close\r\n\r\nInternal Server Error")
    assert after[0] == 200


async def test_one_connections_failing_deadline_check_stops_no_other_deadline() -> None:
    """The sweeper checks every connection of a worker: a check that raises (a bug) aborts
    that connection alone, logged; the others' deadlines still fire, tick after tick."""
    from counters.cli.http_guard import TICK, _Sweeper

    class Watched:
        def __init__(self, fails: bool) -> None:
            self.fails, self.checks, self.transport = fails, 0, self
            self.aborted = False

        def check_deadlines(self, now: float) -> None:
            self.checks += 1
            if self.fails:
                raise RuntimeError("broken check")

        def abort(self) -> None:
            self.aborted = True

    sweeper = _Sweeper(asyncio.get_running_loop())
    broken, healthy = Watched(True), Watched(False)
    sweeper.watch(broken)  # type: ignore[arg-type]
    sweeper.watch(healthy)  # type: ignore[arg-type]
    await asyncio.sleep(TICK * 3.5)
    sweeper.forget(healthy)  # type: ignore[arg-type]
    await asyncio.sleep(TICK * 1.5)  # nothing watched: the timer stops
    assert broken.aborted and broken.checks == 1
    assert healthy.checks >= 2


async def test_the_durability_gates_503_carries_the_request_id_on_both_paths(
    settings: Settings,
) -> None:
    """While the durability window is full every write gets 503 before any handler runs; that
    answer, too, echoes the caller's ``X-Request-Id`` (or names a fresh one), on the hot lane and
    through ASGI alike: an operator tracing a refused call finds it as any other (it had none)."""
    app = create_app(settings)
    body = b'{"action": "daily_chat"}'

    def request(path: bytes, sent_id: bytes) -> bytes:
        # Connection: close, so that ``exchange`` reads to the end at once instead of waiting
        # out the keep-alive timeout (5 s) five times; the gate answers the same either way.
        close = b"Connection: close\r\n"
        return gain_request("gate-user", body, path=path, extra=sent_id + close)

    async with serving(settings, app=app) as port:
        durability = app.state.durability
        durability.write_refusal = BacklogFull("Too many changes are not yet durable")
        answers = [
            await asyncio.to_thread(exchange, port, request(path, sent_id))
            for path in (b"/api/exp/gain", b"/api/exp/gain?via=asgi")
            for sent_id in (b"X-Request-Id: fixed-id\r\n", b"")
        ]
        durability.write_refusal = None
        after = await asyncio.to_thread(exchange, port, request(b"/api/exp/gain", b""))
    for (answer,) in answers:
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in answer
    assert b"x-request-id: fixed-id\r\n" in answers[0][0]
    assert b"x-request-id: fixed-id\r\n" in answers[2][0]
    for fresh in (answers[1][0], answers[3][0]):
        assert re.search(rb"\r\nx-request-id: [0-9a-f]{8}-[0-9a-f]+\r\n", fresh), fresh
    assert after[0].startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    ("coding", "expected"),
    [
        (b"gzip, chunked", UNSUPPORTED_CODING),
        (b"deflate,Chunked", UNSUPPORTED_CODING),
        (b"chunked, gzip", MALFORMED),
        (b"gzip", MALFORMED),
    ],
    ids=["gzip-chunked", "deflate-chunked", "chunked-gzip", "gzip"],
)
async def test_a_transfer_coding_other_than_chunked_is_refused_and_changes_nothing(
    settings: Settings, coding: bytes, expected: tuple[int, str, str]
) -> None:
    """RFC 9112: a coding the server does not decode is 501, a body whose last coding is not
    chunked has no length (400); either way the connection closes, the body unread. httptools
    took ``gzip, chunked`` for chunked and handed the compressed bytes on as the body (the
    handler saw them as JSON). ``chunked`` alone is served (either case)."""
    body = b'{"action": "daily_chat"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    auth = "".join(f"{k}: {v}\r\n" for k, v in service_headers("coding-user").items()).encode()

    def request(value: bytes, extra: bytes = b"") -> bytes:
        return (
            b"POST /api/exp/gain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + auth
            + extra
            + b"Transfer-Encoding: "
            + value
            + b"\r\n\r\n"
            + chunked
        )

    async with serving(settings) as port:
        refused = await asyncio.to_thread(exchange, port, request(coding))
        # Connection: close on the served one only (the refused one must close by itself), so
        # that ``exchange`` does not wait out the keep-alive timeout (5 s) for its end.
        served = await asyncio.to_thread(
            exchange, port, request(b"CHUNKED", b"Connection: close\r\n")
        )
    assert len(refused) == 1 and status_and_body(refused[0]) == (
        expected[0],
        {"detail": expected[1], "code": expected[2]},
    )
    assert b"connection: close\r\n" in refused[0]
    assert len(served) == 1 and status_and_body(served[0])[0] == 200
    assert status_and_body(served[0])[1]["exp_added"] == 20  # the refused one applied nothing


async def test_trailer_fields_are_never_taken_for_headers(settings: Settings) -> None:
    """A chunked body may end in trailer fields; uvicorn appended them to the request's headers
    (the ASGI scope's list, read once the body is whole), so a trailer acted as a header the
    head never had: ``Authorization`` and ``X-User-Id`` sent after the body authenticated the
    request and chose its user, past whatever checked the head (a gateway). RFC 9110 section
    6.5.1: a trailer field is not merged into the header section; here it is dropped."""
    body = b'{"action": "daily_chat"}'
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(body), body)
    key = b"Authorization: Bearer " + SERVICE_KEY.encode() + b"\r\n"

    def request(head: bytes, trailer: bytes) -> bytes:
        return (
            b"POST /api/exp/gain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + head
            + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + chunked
            + trailer
            + b"\r\n"
        )

    async with serving(settings) as port:
        unauthenticated = await asyncio.to_thread(
            exchange, port, request(b"", key + b"X-User-Id: trailer-1\r\n")
        )
        no_user = await asyncio.to_thread(exchange, port, request(key, b"X-User-Id: trailer-2\r\n"))
        other_user = await asyncio.to_thread(
            exchange, port, request(key + b"X-User-Id: head-3\r\n", b"X-User-Id: trailer-3\r\n")
        )
        after = [
            await asyncio.to_thread(post, port, "/api/exp/gain", body, service_headers(user))
            for user in ("trailer-1", "trailer-2", "trailer-3")
        ]
    assert status_and_body(unauthenticated[0])[0] == 401
    assert status_and_body(no_user[0])[0] == 422  # a service key must name the user
    status, answer = status_and_body(other_user[0])  # no repeated X-User-Id either
    assert status == 200 and answer["awarded_to"] == "head-3"
    for status, answer in after:  # none of them was awarded before
        assert status == 200 and json.loads(answer)["total_exp"] == 20


async def test_a_refused_transfer_coding_logs_no_parse_warning_and_garbage_still_does(
    settings: Settings, log_lines: io.StringIO
) -> None:
    """uvicorn logged "Invalid HTTP request received." (a warning) for every head this
    protocol refuses on purpose: a client sending ``Transfer-Encoding: gzip`` wrote a
    misleading warning per request. Bytes that do not parse as HTTP still get it."""
    refused = (
        b"POST /api/v1/xp/balance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    async with serving(settings, log_lines) as port:
        answer = await asyncio.to_thread(exchange, port, refused)
        assert status_and_body(answer[0])[1]["code"] == "transfer_coding_not_supported"
        quiet = log_lines.getvalue()
        garbage = await asyncio.to_thread(exchange, port, b"NOT HTTP AT ALL\r\n\r\n")
        assert status_and_body(garbage[0])[1]["code"] == "malformed_request"
    warned = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    parse_warnings = [w for w in warned if w["message"] == "Invalid HTTP request received."]
    assert "Invalid HTTP request received." not in quiet
    assert len(parse_warnings) == 1 and parse_warnings[0]["level"].lower() == "warning"
