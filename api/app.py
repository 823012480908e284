"""The ASGI application: routes, error handlers, and the resources its lifespan owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from api.asgi import CountersApp
from api.cors import cors_middleware, hot_cors
from api.errors import EXCEPTION_HANDLERS
from api.routes import batch as batch_routes
from api.routes import docs as docs_routes
from api.routes import entitlements as entitlement_routes
from api.routes import exp as exp_routes
from api.routes import health as health_routes
from api.routes import history as history_routes
from api.routes import leaderboard as leaderboard_routes
from api.routes import xp as xp_routes
from counters import metrics
from counters.clock import Clock
from counters.rules import Rules
from counters.runtime.durability import Durability
from counters.runtime.reload import RulesReloader, settle_tiers
from counters.runtime.services import Services
from counters.settings import Settings


def create_app(
    settings: Settings, *, rules: Rules | None = None, clock: Clock | None = None
) -> CountersApp:
    """The service as an ASGI app; Redis and scripts are set up when its lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: CountersApp) -> AsyncIterator[None]:
        durability = await Durability.open(settings)  # Postgres, when a database is configured
        try:
            settled = await durability.settle_layout(settings)  # the recorded bucket count
        except BaseException:
            await durability.close()
            raise
        services = Services.build(settled, rules=rules, clock=clock, store=durability.store)
        try:  # the tiers served before are still defined (counters/runtime/reload.py)
            timeout = max(settings.redis_timeout_seconds, 1.0)
            served = await settle_tiers(services.redis, services.rules, timeout)
            await services.scripts.connect()  # FCALL on Redis >= 7, else EVALSHA: chosen once
        except BaseException:
            await services.close()
            await durability.close()
            raise
        app.use_services(services)
        app.state.durability = durability.start(services)
        reloader = RulesReloader(
            services, settings.rules, settings.rules_watch_seconds, served=served
        )
        if rules is None:  # rules handed in (tests) are not replaced from a file
            reloader.start()  # SIGHUP and changes to the rules file reload them
        app.state.rules_reloader = reloader
        # Per-request metric updates reach prometheus-client's shared values each second.
        flusher = asyncio.create_task(metrics.flush_every(1.0), name="metrics")
        if isinstance(app, CountersApp):
            app.durability = durability  # the write gate of the durability window (api.asgi)
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await reloader.close()
            await durability.close()
            await services.close()
            metrics.flush()

    return CountersApp(
        hot=[exp_routes.hot_gain, xp_routes.hot_debit],
        metrics=settings.metrics_enabled,
        access_log=settings.access_log,
        routes=[
            *exp_routes.routes,
            *batch_routes.routes,
            *entitlement_routes.routes,
            *health_routes.routes,
            *(health_routes.metrics_routes if settings.metrics_enabled else []),
            *history_routes.routes,
            *leaderboard_routes.routes,
            *xp_routes.routes,
            *docs_routes.routes(settings),
        ],
        hot_wrapper=hot_cors(settings),
        middleware=cors_middleware(settings),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
