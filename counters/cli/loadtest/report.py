"""The report of a load run: rates, latency percentiles, counts per status and per outcome code,
a per-second timeline; as text, as JSON, and as a PNG chart (matplotlib, an optional extra)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from counters.cli.loadtest.driver import Recorder

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(int(q * len(sorted_values)), len(sorted_values) - 1)
    return round(sorted_values[index] * 1000, 3)


def timeline(recorder: Recorder) -> list[dict[str, float]]:
    """Per second of the run (by completion time): requests, errors, p50 and p99 latency (ms)."""
    seconds: dict[int, list[float]] = defaultdict(list)
    errors: dict[int, int] = defaultdict(int)
    for done, latency, failed in zip(
        recorder.done_at, recorder.latencies, recorder.failed, strict=True
    ):
        second = int(done)
        seconds[second].append(latency)
        errors[second] += failed
    rows = []
    for second in range(max(seconds, default=-1) + 1):
        values = sorted(seconds.get(second, []))
        rows.append(
            {
                "second": second,
                "requests": len(values),
                "errors": errors.get(second, 0),
                "p50_ms": _percentile(values, 0.5),
                "p99_ms": _percentile(values, 0.99),
            }
        )
    return rows


def summary(recorder: Recorder, setup: dict[str, Any]) -> dict[str, Any]:
    """The whole report as one JSON-ready dict; ``setup`` says what was run against what."""
    values = sorted(recorder.latencies)
    seconds = recorder.finished or 1e-9
    latency = {name: _percentile(values, q) for name, q in PERCENTILES}
    latency["max"] = round(values[-1] * 1000, 3) if values else 0.0
    latency["mean"] = round(sum(values) / len(values) * 1000, 3) if values else 0.0
    return {
        **setup,
        "requests": recorder.completed,
        "seconds": round(seconds, 3),
        "rate_per_second": round(recorder.completed / seconds, 1),
        "ok_per_second": round(recorder.codes.get("ok", 0) / seconds, 1),
        "errors": recorder.errors,
        "rejected_4xx": recorder.rejected,
        "latency_ms": latency,
        "statuses": {str(k): v for k, v in sorted(recorder.statuses.items())},
        "codes": dict(recorder.codes.most_common()),
        "operations": dict(recorder.operations.most_common()),
        "shadow_refused": dict(recorder.shadow_refused),
        "timeline": timeline(recorder),
    }


def render(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    mode = f"open loop at {report['rate']}/s" if report.get("rate") else "closed loop"
    lat = report["latency_ms"]
    lines = [
        f"{report['target']}  mix {report['mix']}  {report['users']} users  {mode}, "
        f"{report['concurrency']} connections",
        f"{report['requests']} requests in {report['seconds']:.1f} s: "
        f"{report['rate_per_second']:,.1f} req/s ({report['ok_per_second']:,.1f} ok/s), "
        f"{report['errors']} errors, {report['rejected_4xx']} 4xx",
        "latency ms: " + "  ".join(f"{name} {lat[name]:.2f}" for name, _ in PERCENTILES)
        + f"  max {lat['max']:.2f}",
        "statuses: " + "  ".join(f"{k}: {v}" for k, v in report["statuses"].items()),
        "codes: " + "  ".join(f"{k}: {v}" for k, v in report["codes"].items()),
    ]  # fmt: skip
    if report["shadow_refused"]:
        shadow = "  ".join(f"{k}: {v}" for k, v in report["shadow_refused"].items())
        lines.append(f"shadow_refused (served, a shadow rule would have refused): {shadow}")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> None:
    """A PNG of throughput (and errors) and latency (p50, p99) per second of the run.

    Needs matplotlib (``pip install 'counters[chart]'``); ``ImportError`` without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = report["timeline"]
    seconds = [row["second"] for row in rows]
    figure, (rate, latency) = pyplot.subplots(2, 1, sharex=True, figsize=(9, 6))
    rate.plot(seconds, [row["requests"] for row in rows], label="responses/s")
    rate.plot(seconds, [row["errors"] for row in rows], label="errors/s", color="tab:red")
    rate.set_ylabel("per second")
    rate.legend(loc="lower right")
    rate.set_title(f"{report['target']}  mix {report['mix']}")
    latency.plot(seconds, [row["p50_ms"] for row in rows], label="p50")
    latency.plot(seconds, [row["p99_ms"] for row in rows], label="p99")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("second of the run")
    latency.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
