"""The app as uvicorn's worker processes build it: settings from the environment."""

from __future__ import annotations

from starlette.applications import Starlette

from api.app import create_app
from counters.settings import Settings


def app_from_env() -> Starlette:
    """Uvicorn factory (``api.main:app_from_env``): every worker reads COUNTERS_* itself."""
    return create_app(Settings.from_env())
