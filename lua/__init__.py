"""The Lua scripts, one file per atomic operation, read with ``importlib.resources``."""

from __future__ import annotations

import functools
import importlib.resources


@functools.cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``, read once a process (the files ship with the code: a
    changed script needs a restart as a changed module does; an app start asked for these
    texts ~180 times)."""
    return importlib.resources.files(__name__).joinpath(f"{name}.lua").read_text("utf-8")


@functools.cache
def library(name: str) -> str:
    """The text of ``lua/lib/<name>.lua``, read once a process (as ``source``)."""
    return importlib.resources.files(__name__).joinpath("lib", f"{name}.lua").read_text("utf-8")
