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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from api.app import create_app
from counters import logs
from counters.cli.embedded import free_port
from counters.cli.http_guard import make_protocol
from counters.settings import Settings
from tests.support.core import service_headers

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
async def serving(settings: Settings, log: io.StringIO | None = None) -> AsyncIterator[int]:
    """The app behind uvicorn with the guarded protocol, configured as ``counters serve`` does;
    with ``log``, the logging too, in the order of a worker: uvicorn's Config, then ours."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, loop="asyncio",
        http=make_protocol(5.0, MAX_HEAD), access_log=False, log_config=None,
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
