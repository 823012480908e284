"""What one ``make bench`` run does: windows, connections, repeats, which rows; and its CLI."""

from __future__ import annotations

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    workers: int = 2
    connections: int = 64
    warmup: float = 2.0
    duration: float = 10.0
    ablation_duration: float = 6.0
    batch_size: int = 100
    batch_connections: int = 4
    debit_users: int = 20_000
    memory_users: int = 10_000
    ablations: bool = True
    repeat: int = 3  # runs of each main HTTP row; the table shows the median run
    only: frozenset[str] = frozenset()  # row keys to run (empty: all), e.g. {"1", "2"}


def parse(argv: list[str] | None, description: str) -> Options:
    """Options from the command line (``python -m bench --help``)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
    defaults = Options()
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--repeat", type=int, default=defaults.repeat, help="runs of each main row (median shown)"
    )
    parser.add_argument("--no-ablations", action="store_true", help="skip the 'ways there' runs")
    parser.add_argument("--quick", action="store_true", help="3 s windows, to try it out")
    parser.add_argument(
        "--only",
        default="",
        help="run only these, comma-separated: 1 (with 1h), 2 (with 2h), 3, 4, 5, 6, memory, "
        "flusher (runs 2 for its rate), creator (a like's cost beside daily_chat's, in "
        "process), metrics (gain with metrics on and off), durable (gain with Postgres and the "
        "flusher: known users 2p, brand-new users 2n), cluster (gain on a 3-master local Redis "
        "Cluster: 2c); no ways-there runs",
    )
    args = parser.parse_args(argv)
    options = Options(
        workers=args.workers,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        batch_size=args.batch_size,
        ablations=not args.no_ablations,
        repeat=max(args.repeat, 1),
        only=frozenset(key.strip() for key in args.only.split(",") if key.strip()),
    )
    if args.quick:
        options = dataclasses.replace(
            options, duration=3.0, warmup=1.0, ablation_duration=3.0, repeat=1
        )
    return options
