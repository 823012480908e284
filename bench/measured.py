"""One HTTP target's measurement, and the median of repeated ones."""

from __future__ import annotations

import dataclasses

from bench.load import LoadResult


@dataclasses.dataclass(frozen=True, slots=True)
class Measured:
    result: LoadResult
    cpu_us: dict[str, float]  # CPU µs per request: server, db (Redis or Postgres), load
    machine: dict[str, float]  # % of the machine's CPU: used by others, stolen by the hypervisor
    spread: str = ""  # with repeats: what the runs ranged over, e.g. "8,682-10,499 req/s"


def median_run(runs: list[Measured], open_loop: bool) -> Measured:
    """The median of repeated runs: by throughput, or by p99 for open-loop (fixed-rate) runs.

    Single runs on a shared VM vary by +-20%; the median of three does not move with one
    disturbed window.
    """
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda m: m.result.p99_ms if open_loop else m.result.rps)
    low, high = ordered[0].result, ordered[-1].result
    spread = (
        f"p99 {low.p99_ms:.2f}-{high.p99_ms:.2f} ms"
        if open_loop
        else f"{low.rps:,.0f}-{high.rps:,.0f} req/s"
    )
    return dataclasses.replace(ordered[(len(ordered) - 1) // 2], spread=spread)
