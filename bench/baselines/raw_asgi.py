"""uvicorn's own floor: a raw ASGI app (no framework) answering the bare route's fixed JSON.

Not a target: a "ways there" row, so the HTTP server's share of a request's CPU is measured
rather than guessed (README, "Why gain stops near 0.45 of the ceiling").
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from bench.baselines.bare import BODY

_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more_body = True
    while more_body:  # read the request to its end, as any route would
        more_body = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def app_from_env() -> object:
    """Uvicorn factory (``bench.baselines.raw_asgi:app_from_env``)."""
    return app
