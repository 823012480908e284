"""The shared thin probe's service (``../shared/perf/thin/thin.py``), for ``bench.wrk_probe``.

Not ours and not copied: the probe's module is imported from where the product team keeps it
(``COUNTERS_THIN_DIR``; default ``../shared/perf/thin`` beside this repository), so the
service and the thinnest one-Redis-call design are measured in one run with the same ``wrk``,
CPU counted the same way (issue #15). The probe reads its token file and Redis port from
``THIN_TOKENS`` and ``THIN_REDIS_PORT`` when it is imported.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "perf" / "thin"


def thin_dir() -> Path | None:
    """Where the probe's ``thin.py`` is, or None when it is not on this machine."""
    where = Path(os.environ.get("COUNTERS_THIN_DIR", str(DEFAULT_DIR)))
    return where if (where / "thin.py").is_file() else None


def app_from_env() -> object:
    """Uvicorn factory (``bench.baselines.thin:app_from_env``): the probe's ASGI ``app``.

    Raises ``RuntimeError`` when the probe is not found."""
    where = thin_dir()
    if where is None:
        raise RuntimeError("the shared thin probe (thin.py) is not found: set COUNTERS_THIN_DIR")
    sys.path.insert(0, str(where))
    return importlib.import_module("thin").app
