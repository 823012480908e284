"""An attacker's requests against ``counters serve``'s HTTP protocol (counters.cli.http_guard)
and its hot lane, over real sockets: each test is a defect found that way, through the lane and
through ASGI (the same path with a query string), which must answer alike."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable
from typing import Any

import pytest

from api.asgi import HotRoute
from counters.cli.http_guard import TICK, GuardedHttpToolsProtocol
from counters.settings import Settings
from tests.cli.test_http_guard import MAX_BODY, exchange, gain_request, serving, status_and_body

pytestmark = pytest.mark.anyio

DAILY = b'{"action": "daily_chat"}'
PATHS = [b"/api/exp/gain", b"/api/exp/gain?via=asgi"]  # the hot lane's, then ASGI's


def by(path: bytes) -> str:
    return "asgi" if b"?" in path else "lane"


def to(path: bytes, request: bytes) -> bytes:
    """``request`` (a gain) sent to ``path`` instead."""
    return request.replace(b"POST /api/exp/gain ", b"POST " + path + b" ", 1)


def chunked_gain(user_id: str, chunks: bytes) -> bytes:
    """A gain whose body comes chunked (``chunks``: the chunked body as sent)."""
    head = gain_request(user_id, b"").replace(b"Content-Length: 0\r\n", b"")
    return head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n") + chunks


def slowed(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every hot request takes ``seconds`` longer before its handler runs (a slow Redis)."""
    handle = HotRoute._handle

    def slow(self: HotRoute, svc: Any, found: Any, body: bytes) -> Awaitable[Any]:
        async def later() -> Any:
            await asyncio.sleep(seconds)
            return await handle(self, svc, found, body)

        return later()

    monkeypatch.setattr(HotRoute, "_handle", slow)


@pytest.mark.parametrize("path", PATHS, ids=by)
async def test_a_queued_request_that_cannot_be_read_waits_for_the_answer_before_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """A request queued behind one in flight whose body then fails (a bad chunk: 400; cut short
    past the read deadline: 408) was refused at once and the connection closed: the request in
    flight was applied and its answer lost (a gain awarded, answered 400 only). Its answer, and
    any queued whole before, now come first."""
    user = f"queued-{by(path)}"
    first = to(path, gain_request(f"{user}-1", DAILY))
    whole = gain_request(f"{user}-2", DAILY)
    bad_chunk = chunked_gain(f"{user}-3", b"zz\r\n")
    cut = gain_request(f"{user}-4", DAILY)[:-4]
    async with serving(settings, read_timeout=0.5) as port:
        malformed = await asyncio.to_thread(exchange, port, first + whole + bad_chunk)
        slowed(monkeypatch, 1.0)  # longer than the read deadline
        slow_first = to(path, gain_request(f"{user}-5", DAILY))
        too_slow = await asyncio.to_thread(exchange, port, slow_first + cut)
    assert [status_and_body(a)[0] for a in malformed] == [200, 200, 400], malformed
    assert [status_and_body(a)[1]["awarded_to"] for a in malformed[:2]] == [
        f"{user}-1",
        f"{user}-2",
    ]
    assert [status_and_body(a)[0] for a in too_slow] == [200, 408], too_slow


def keep_alive(monkeypatch: pytest.MonkeyPatch, seconds: int) -> None:
    """Served connections close after ``seconds`` idle (uvicorn's ``timeout_keep_alive``)."""
    made = GuardedHttpToolsProtocol.connection_made

    def shorter(self: GuardedHttpToolsProtocol, transport: Any) -> None:
        self.timeout_keep_alive = seconds
        made(self, transport)

    monkeypatch.setattr(GuardedHttpToolsProtocol, "connection_made", shorter)


async def closed_after(port: int, writes: list[tuple[float, bytes]]) -> tuple[list[int], float]:
    """Each of ``writes`` sent after its pause (s) on one connection: the statuses answered,
    and how long after the last write the server closed it (inf: not within 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        for pause, data in writes:
            await asyncio.sleep(pause)
            writer.write(data)
        last = time.monotonic()
        async with asyncio.timeout(10):
            while chunk := await reader.read(65_536):
                got += chunk
        closed = time.monotonic() - last
    except TimeoutError:
        closed = math.inf
    finally:
        writer.close()
    return [int(status) for status in re.findall(rb"HTTP/1.1 (\d{3}) ", got)], closed


async def test_a_connection_answered_before_its_body_came_whole_still_closes_when_idle(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer sent before its request's body was read (a 413 over the body limit, a 404, the
    durability gate's 503) armed the keep-alive deadline, the rest of the body cleared it, and
    the read deadline ended with the body: nothing was left to close the connection, held open
    for ever after (uvicorn 0.54 does the same). The keep-alive now starts once both are done."""
    keep_alive(monkeypatch, 1)
    over = gain_request("early-1", b"x" * (MAX_BODY + 1))
    unknown = over.replace(b"POST /api/exp/gain ", b"POST /api/nowhere ")
    async with serving(settings) as port:
        for request in (over, unknown):
            statuses, closed = await closed_after(
                port, [(0, request[:-1000]), (0.3, request[-1000:])]
            )
            assert statuses[0] in (404, 413) and len(statuses) == 1, statuses
            assert closed < 1 + 2 * TICK + 0.5, closed


@pytest.mark.parametrize("path", PATHS, ids=by)
async def test_a_request_begun_before_the_answer_before_it_has_the_read_deadline(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """A request whose first bytes came while the one before it was being answered was closed
    the keep-alive seconds after that answer, with nothing said, though its read deadline (from
    its first byte) had not passed: the answer set the keep-alive deadline over it."""
    keep_alive(monkeypatch, 1)
    slowed(monkeypatch, 0.5)
    user = f"begun-{by(path)}"
    second = gain_request(f"{user}-2", DAILY)
    writes = [(0, to(path, gain_request(f"{user}-1", DAILY))), (0.2, second[:20])]
    async with serving(settings, read_timeout=5.0) as port:
        statuses, _ = await closed_after(
            port,
            [*writes, (1.8, second[20:].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))],
        )
    assert statuses == [200, 200]


@pytest.mark.parametrize("path", PATHS, ids=by)
async def test_bytes_that_begin_no_request_do_not_keep_an_idle_connection_open(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """After an answer, a lone CRLF (which HTTP lets come before a request, and the parser
    skips) cleared the keep-alive deadline and armed no read deadline: two bytes held the
    connection open for ever (uvicorn 0.54 does the same)."""
    keep_alive(monkeypatch, 1)
    async with serving(settings) as port:
        request = to(path, gain_request(f"crlf-{by(path)}", DAILY))
        statuses, closed = await closed_after(port, [(0, request), (0.3, b"\r\n")])
    assert statuses == [200]
    assert closed < 1 + 2 * TICK + 0.5, closed


@pytest.mark.parametrize("path", PATHS, ids=by)
async def test_a_read_deadline_passed_behind_a_request_in_flight_waits_for_its_answer(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """A request and the start of the next one's head in one write, the first slower than the
    read deadline (a slow Redis): when the second's deadline passed the connection was closed
    at once, with nothing said, for no head bytes had been counted (they came in the chunk of
    the head before): the first was applied and its answer lost. Now its answer, then a 408."""
    slowed(monkeypatch, 1.0)
    user = f"same-chunk-{by(path)}"
    first = to(path, gain_request(user, DAILY))
    async with serving(settings, read_timeout=0.5) as port:
        answers = await asyncio.to_thread(
            exchange, port, first + b"POST /api/exp/gain HTTP/1.1\r\nHo"
        )
    assert [status_and_body(a)[0] for a in answers] == [200, 408], answers
    assert status_and_body(answers[0])[1]["awarded_to"] == user
