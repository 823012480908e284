"""The Lua scripts, one file per atomic operation, read with ``importlib.resources``."""

from __future__ import annotations

import importlib.resources


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return importlib.resources.files(__name__).joinpath(f"{name}.lua").read_text("utf-8")
