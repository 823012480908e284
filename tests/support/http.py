"""An HTTP client for an in-process app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from starlette.types import ASGIApp


@asynccontextmanager
async def asgi_client(app: ASGIApp) -> AsyncIterator[httpx2.AsyncClient]:
    """A client that sends its requests to ``app`` in this process (no sockets)."""
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as http:
        yield http
