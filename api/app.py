"""The ASGI application: routes, error handlers, and the resources its lifespan owns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from api import exp_routes
from api.errors import EXCEPTION_HANDLERS
from counters.clock import Clock
from counters.rules import Rules
from counters.services import Services
from counters.settings import Settings


def create_app(
    settings: Settings, *, rules: Rules | None = None, clock: Clock | None = None
) -> Starlette:
    """The service as an ASGI app; Redis and scripts are set up when its lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = Services.build(settings, rules=rules, clock=clock)
        app.state.services = services
        try:
            yield
        finally:
            await services.close()

    return Starlette(
        routes=[*exp_routes.routes],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
