"""The load generator: N keep-alive HTTP/1.1 connections over asyncio, in a process of its own.

Every HTTP target is driven by this same code with the same settings. Requests are precomputed
bytes (one per distinct user, sent in order and cycled), so the generator's own cost per request
is one ``write`` and a minimal response parse. A connection sends its next request as soon as its
previous response is complete (closed loop, ``rate=None``), or on a fixed schedule (open loop,
``rate`` requests/s over all connections): then latency counts from the scheduled send time, so
a stalled server is not hidden by the generator waiting for it (no coordinated omission). The
event loop's timers fire up to a millisecond late, so a send less than ``_TIMER_SLACK`` behind its
schedule counts from when it was really sent.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import uvloop

_LENGTH = b"ontent-length:"  # matches Content-Length and content-length
_TIMER_SLACK = 0.002


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to send, to whom, for how long."""

    port: int
    requests: list[bytes]  # raw HTTP/1.1 requests, sent in order and cycled
    connections: int = 64
    warmup: float = 2.0  # seconds sent but not measured
    duration: float = 10.0  # seconds measured
    rate: float | None = None  # requests/s over all connections; None: as fast as possible
    items_per_request: int = 1  # awards carried by one request (batch endpoints)


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int  # completed inside the measured window
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connections lost mid-run
    items_per_request: int = 1
    cpu_seconds: float = 0.0  # the generator's own CPU time in the measured window

    @property
    def items_per_second(self) -> float:
        return self.rps * self.items_per_request


def _percentile(sorted_values: array[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(int(q * len(sorted_values)), len(sorted_values) - 1)
    return sorted_values[index] * 1000


class _Run:
    """Shared state of one run: the request cycle, the clock window and what was measured."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.next_index = 0
        self.measure_from = float("inf")
        self.measure_until = float("inf")
        self.stopping = False
        self.latencies: array[float] = array("d")
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.done = self.loop.create_future()
        self.open = 0
        # Open loop: connection c sends at start + c/rate + k*connections/rate.
        self.interval = spec.connections / spec.rate if spec.rate else 0.0

    def next_request(self) -> bytes:
        requests = self.spec.requests
        request = requests[self.next_index]
        self.next_index = (self.next_index + 1) % len(requests)
        return request

    def record(self, started: float, finished: float, status: int) -> None:
        if self.measure_from <= finished < self.measure_until:
            self.latencies.append(finished - started)
            self.statuses[status] += 1

    def closed(self, lost: bool) -> None:
        self.open -= 1
        if lost and not self.stopping:
            self.errors += 1
        if self.open == 0 and not self.done.done():
            self.done.set_result(None)


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, run: _Run, offset: float) -> None:
        self.run = run
        self.buffer = b""
        self.scheduled = 0.0  # open loop: when this request was due
        self.sent = 0.0
        self.offset = offset
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.run.open += 1

    def start(self, at: float) -> None:
        self.scheduled = at + self.offset
        self._send_when_due(at)

    def _send_when_due(self, now: float) -> None:
        delay = self.scheduled - now
        if delay > 0:
            self.run.loop.call_later(delay, self._send)
        else:
            self._send()

    def _send(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.sent = time.perf_counter()
            self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            at = buffer.find(_LENGTH, 0, head_end)
            length = int(buffer[at + len(_LENGTH) : buffer.index(b"\r\n", at)]) if at >= 0 else 0
            end = head_end + 4 + length
            if len(buffer) < end:
                break
            self._complete(int(buffer[9:12]))
            buffer = buffer[end:]
        self.buffer = buffer

    def _complete(self, status: int) -> None:
        run = self.run
        now = time.perf_counter()
        late = self.sent - self.scheduled > _TIMER_SLACK
        run.record(self.scheduled if run.interval and late else self.sent, now, status)
        if run.stopping:
            assert self.transport is not None
            self.transport.close()
        elif run.interval:
            self.scheduled += run.interval
            self._send_when_due(now)
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.run.closed(lost=True)


async def _drive(spec: LoadSpec, window: Callable[[str], None]) -> LoadResult:
    run = _Run(spec)
    loop = run.loop
    clients = []
    for index in range(spec.connections):
        offset = index / spec.rate if spec.rate else 0.0
        client = _Client(run, offset)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", spec.port)  # type: ignore[misc]
        clients.append(client)
    start = time.perf_counter()
    for client in clients:
        client.start(start)
    await asyncio.sleep(spec.warmup)
    window("start")
    run.measure_from = time.perf_counter()
    cpu_from = time.process_time()
    await asyncio.sleep(spec.duration)
    run.measure_until = time.perf_counter()
    cpu_seconds = time.process_time() - cpu_from
    window("end")
    run.stopping = True  # each connection closes after its in-flight response
    try:
        await asyncio.wait_for(asyncio.shield(run.done), 5.0)
    except TimeoutError:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
    latencies = array("d", sorted(run.latencies))
    count = len(latencies)
    return LoadResult(
        requests=count,
        seconds=spec.duration,
        rps=count / spec.duration,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        p999_ms=_percentile(latencies, 0.999),
        statuses=dict(sorted(run.statuses.items())),
        errors=run.errors,
        items_per_request=spec.items_per_request,
        cpu_seconds=cpu_seconds,
    )


def _child(spec: LoadSpec, queue: multiprocessing.Queue[LoadResult | str]) -> None:
    queue.put(uvloop.run(_drive(spec, queue.put)))


def run_load(spec: LoadSpec, window: Callable[[str], None] | None = None) -> LoadResult:
    """Drive ``spec`` from a separate process (so the generator never shares the server's GIL).

    ``window("start")`` and ``window("end")`` are called as the measured window opens and
    closes (to sample other processes' CPU time over the same window).
    """
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[LoadResult | str] = context.Queue()
    process = context.Process(target=_child, args=(spec, queue), daemon=True)
    process.start()
    try:
        while True:
            message = queue.get(timeout=spec.warmup + spec.duration + 120)
            if isinstance(message, LoadResult):
                result = message
                break
            if window is not None:
                window(message)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    return result
