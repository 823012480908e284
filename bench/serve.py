"""Serve an app factory exactly as ``counters serve`` serves the service: its uvicorn options,
its HTTP protocol (``counters.cli.http_guard``: one write an answer, no timer a request) and its
supervisor (``counters.cli.supervisor.serve_options``).

``python -m bench.serve FACTORY``; host, port, workers and everything else from the COUNTERS_*
variables (``Settings.from_env``). ``bench.servers`` runs the service under test this way; the
baselines (bare Starlette, the shared thin probe) run under stock uvicorn, as shipped.
"""

from __future__ import annotations

import sys

from counters.cli import supervisor
from counters.settings import Settings


def main(argv: list[str]) -> None:
    """Serve ``argv[0]`` (a "module:factory" string) until stopped."""
    supervisor.run(argv[0], **supervisor.serve_options(Settings.from_env()))


if __name__ == "__main__":
    main(sys.argv[1:])
