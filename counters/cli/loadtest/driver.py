"""The load driver: aiohttp with pooled keep-alive connections, closed loop or open loop.

Closed loop (``rate=None``): ``concurrency`` workers each send a request as soon as the previous
one answered. Open loop: requests are scheduled at a fixed ``rate`` whatever the server does, and
each latency counts from the scheduled time, so a stalled server is not hidden by the driver
waiting for it (no coordinated omission); ``concurrency`` then bounds the connections.

Every response is recorded: the time it completed, its latency, its status and its outcome code
(an error body's ``code`` field when present, else the status; ``ok`` for a success), and any
``shadow_refused`` a success carried.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

# (method, url, headers, body, operation): one request, ready to send
Prepared = tuple[str, str, dict[str, str], bytes | None, str]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send and how: cycle through ``requests`` until ``duration`` seconds or ``count``
    requests (whichever is given; both: whichever comes first)."""

    requests: Sequence[Prepared]
    concurrency: int = 32
    rate: float | None = None  # requests/s; None: closed loop
    duration: float | None = 10.0
    count: int | None = None
    timeout: float = 10.0  # seconds one request may take before it counts as an error


@dataclass(slots=True)
class Recorder:
    """Everything measured in one run (times in seconds from ``start``)."""

    start: float = field(default_factory=time.perf_counter)
    done_at: array[float] = field(default_factory=lambda: array("d"))
    latencies: array[float] = field(default_factory=lambda: array("d"))
    failed: array[int] = field(default_factory=lambda: array("b"))
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    shadow_refused: Counter[str] = field(default_factory=Counter)
    errors: int = 0  # transport failures, timeouts and 5xx
    rejected: int = 0  # 4xx (a limit, too little XP, ...: outcomes, not failures)
    finished: float = 0.0

    def record(self, began: float, status: int, code: str, operation: str, body: bytes) -> None:
        now = time.perf_counter()
        self.done_at.append(now - self.start)
        self.latencies.append(now - began)
        failed = status == 0 or status >= 500
        self.failed.append(failed)
        self.errors += failed
        self.rejected += 400 <= status < 500
        self.statuses[status] += 1
        self.codes[code] += 1
        self.operations[operation] += 1
        if status < 300 and b'"shadow_refused"' in body:
            rule = orjson.loads(body).get("shadow_refused")
            self.shadow_refused[str(rule)] += 1

    @property
    def completed(self) -> int:
        return len(self.latencies)


def outcome_code(status: int, body: bytes) -> str:
    """``ok`` for a success; an error body's ``code`` when it has one; else the status."""
    if status < 400:
        return "ok"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return str(status)
    code = parsed.get("code") if isinstance(parsed, dict) else None
    return code if isinstance(code, str) and code else str(status)


class _Run:
    def __init__(self, plan: Plan, session: aiohttp.ClientSession, recorder: Recorder) -> None:
        self.plan = plan
        self.session = session
        self.recorder = recorder
        self.next = 0
        self.stop = False
        self.ends = float("inf") if plan.duration is None else recorder.start + plan.duration

    def take(self) -> Prepared | None:
        """The next request to send, or None when the run is over."""
        plan = self.plan
        if self.stop or (plan.count is not None and self.next >= plan.count):
            return None
        if time.perf_counter() >= self.ends:
            self.stop = True
            return None
        request = plan.requests[self.next % len(plan.requests)]
        self.next += 1
        return request

    async def send(self, request: Prepared, began: float) -> None:
        method, url, headers, body, operation = request
        try:
            async with self.session.request(method, url, headers=headers, data=body) as response:
                data = await response.read()
                status = response.status
            code = outcome_code(status, data)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, code, data = 0, type(exc).__name__, b""
        self.recorder.record(began, status, code, operation, data)

    async def closed_worker(self) -> None:
        while (request := self.take()) is not None:
            await self.send(request, time.perf_counter())

    async def open_loop(self, rate: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = self.recorder.start
        k = 0
        while (request := self.take()) is not None:
            due = start + k / rate
            if due >= self.ends:
                break
            k += 1
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.send(request, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.plan.timeout + 1)


async def drive(plan: Plan, on_tick: Callable[[Recorder], None] | None = None) -> Recorder:
    """Run ``plan``; ``on_tick(recorder)`` is called twice a second (a progress display)."""
    connector = aiohttp.TCPConnector(limit=plan.concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    recorder = Recorder()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        recorder.start = time.perf_counter()
        run = _Run(plan, session, recorder)
        work: asyncio.Future[Any]
        if plan.rate is None:
            work = asyncio.gather(*(run.closed_worker() for _ in range(plan.concurrency)))
        else:
            work = asyncio.ensure_future(run.open_loop(plan.rate))
        while not work.done():  # at the end, in-flight requests complete and are recorded
            await asyncio.wait([work], timeout=0.5)
            if on_tick is not None:
                on_tick(recorder)
        await work
    recorder.finished = time.perf_counter() - recorder.start
    return recorder
