"""The sync client's deadline on every socket operation (H2: a reply that trickles in).

httpx2's timeouts are per socket read: a server that sends one byte just inside each read's
timeout keeps a request open for as long as it likes (measured: ``debit()`` held 13 s at one
byte every 0.25 s against a 3 s deadline). The async client bounds the whole attempt with
``asyncio.timeout``; a thread has no such thing, so the sync client's connections read through
``DeadlineBackend``: each connect, write and read waits at most what is left of the calling
call's deadline (``DEADLINE``, a monotonic time set by ``CountersClient.call`` for its thread),
and one started after it raises httpcore2's timeout, which httpx2 maps to its own
``ReadTimeout``/``WriteTimeout``/``ConnectTimeout`` (the call then raises ``Unavailable``).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import httpcore2
import httpx2

# The monotonic time (time.monotonic()) by which the current call must end; None outside one.
DEADLINE: ContextVar[float | None] = ContextVar("counters_client_deadline", default=None)


def cut(timeout: float | None, timed_out: type[Exception]) -> float | None:
    """``timeout`` (seconds; None: none) cut to what is left of the current call's deadline;
    raises ``timed_out`` when nothing is left."""
    end = DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise timed_out("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore2.NetworkStream):
    """A connection whose every wait ends by the current call's deadline."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, cut(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, cut(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        tls = self.inner.start_tls(
            ssl_context, server_hostname, cut(timeout, httpcore2.ConnectTimeout)
        )
        return DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class DeadlineBackend(httpcore2.NetworkBackend):
    """httpcore2's sync backend with ``DeadlineStream`` connections."""

    def __init__(self, inner: httpcore2.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        stream = self.inner.connect_tcp(
            host, port, cut(timeout, httpcore2.ConnectTimeout), local_address, socket_options
        )
        return DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        stream = self.inner.connect_unix_socket(
            path, cut(timeout, httpcore2.ConnectTimeout), socket_options
        )
        return DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def read_by_deadlines(http: httpx2.Client) -> None:
    """Make ``http``'s own connections read through ``DeadlineBackend``. httpx2 has no
    parameter for a network backend, so it is set on the httpcore2 pool of the client's
    default transport (``_transport._pool``; the client is otherwise built as before: limits,
    proxies from the environment). A transport of the caller's, or a later httpx2 that lays
    this out otherwise, is left as it is: the sync client still checks the deadline between
    the body's chunks, and tests/clients/test_python_client.py::
    test_a_trickling_reply_costs_a_call_its_deadline[headers] fails for the latter."""
    transport = getattr(http, "_transport", None)
    pool = getattr(transport, "_pool", None)
    if isinstance(transport, httpx2.HTTPTransport) and isinstance(pool, httpcore2.ConnectionPool):
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore2.NetworkBackend):
            pool._network_backend = DeadlineBackend(backend)
