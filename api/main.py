"""The app as uvicorn's worker processes build it: settings from the environment."""

from __future__ import annotations

import gc

from api.app import create_app
from api.asgi import CountersApp
from counters.logs import configure as configure_logging
from counters.runtime.parent import follow_supervisor
from counters.settings import Settings


def app_from_env() -> CountersApp:
    """Uvicorn factory (``api.main:app_from_env``): every worker reads COUNTERS_* itself,
    and stops if the supervisor that started it dies (``follow_supervisor``)."""
    follow_supervisor()
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # Everything built so far (modules, rules, the app) lives as long as the worker: freeze it
    # out of the collector's sight. Measured under the gain load, a full collection then pauses
    # a worker for ~4 ms instead of ~30 ms (bench/README.md, "Ways there").
    gc.collect()
    gc.freeze()
    # A request frees what it allocates by reference counting; the collector is only for
    # cycles. At CPython's threshold (700), the objects of 64 requests in flight reach it: it
    # ran every ~70 requests of the gain mix, 1.8 us a request in all, re-scanning the requests
    # in flight each time; at 10,000, not once in 62,000 (README, Performance, "Thirteenth
    # round"). The older generations' thresholds are kept.
    gc.set_threshold(settings.gc_threshold, *gc.get_threshold()[1:])
    return app
